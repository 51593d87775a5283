# baton_service 'NAME': one service supervised by baton, with its own system
# account, /var/lib/NAME and /var/log/NAME, /etc/baton/NAME.toml, an LSB init
# script (or a systemd unit where systemd runs), enabled and started.
provides :baton_service
unified_mode true

property :service_name, String, name_property: true
property :command, Array, required: true
property :description, String, default: lazy { "#{service_name} supervised by baton" }
property :user, String, default: lazy { service_name }
property :group, String, default: lazy { user }
property :workdir, String, default: lazy { "/var/lib/#{service_name}" }
property :env, Hash, default: {}
property :java_opts, String
property :umask, String, default: lazy { node['baton']['defaults']['umask'] }
property :port, Integer
property :port_range, Array
# HOST:PORT baton binds and shares with every instance ([listen], fd 3): config changes
# then apply by a zero-downtime handoff even though the port is fixed.
property :listen, String
property :ready, Hash, default: {}
property :ready_timeout, String, default: lazy { node['baton']['defaults']['ready_timeout'] }
property :stop_signal, String, default: lazy { node['baton']['defaults']['stop_signal'] }
property :stop_timeout, String, default: lazy { node['baton']['defaults']['stop_timeout'] }
property :dump_signal, [String, nil], default: lazy { node['baton']['defaults']['dump_signal'] }
property :restart_policy, String, equal_to: %w(never on-failure always),
                                  default: lazy { node['baton']['defaults']['restart_policy'] }
property :restart_backoff, Array, default: lazy { node['baton']['defaults']['restart_backoff'] }
property :restart_max, [Integer, nil], default: lazy { node['baton']['defaults']['restart_max'] }
property :restart_window, String, default: lazy { node['baton']['defaults']['restart_window'] }
property :log_dir, String, default: lazy { "/var/log/#{service_name}" }
property :log_max_size, String, default: lazy { node['baton']['defaults']['log_max_size'] }
property :log_keep, Integer, default: lazy { node['baton']['defaults']['log_keep'] }
property :init_system, String, equal_to: %w(auto sysv systemd), default: lazy { node['baton']['init_system'] }

default_action :create

action :create do
  name = new_resource.service_name
  baton = node['baton']['bin_path']
  config = config_path
  config_vars = config_variables
  unit_vars = unit_variables
  pidfile = unit_vars[:pidfile]
  # A config change reaches a running service by a handoff (the init script's reload is
  # `baton deploy NAME`), never by a restart; a stopped one takes it when it starts.
  running = ::File.executable?(baton) && shell_out("#{baton} --config #{config} status #{name}").exitstatus.zero?

  group new_resource.group do
    system true
  end

  user new_resource.user do
    system true
    gid new_resource.group
    home new_resource.workdir
    shell '/usr/sbin/nologin'
    manage_home false
  end

  [new_resource.workdir, new_resource.log_dir].each do |dir|
    directory dir do
      owner new_resource.user
      group new_resource.group
      mode '0750'
    end
  end

  template config do
    cookbook 'baton'
    source 'service.toml.erb'
    owner 'root'
    group new_resource.group
    mode '0640'
    variables config_vars
    verify "#{baton} --config %{path} check #{name}"
    notifies :reload, "service[#{name}]", :delayed if running
  end

  if systemd?
    # Declared before the unit: in unified mode an immediate notification needs its target already declared.
    execute 'systemctl daemon-reload' do
      action :nothing
    end

    template "/etc/systemd/system/#{name}.service" do
      cookbook 'baton'
      source 'baton.service.erb'
      owner 'root'
      group 'root'
      mode '0644'
      variables unit_vars
      notifies :run, 'execute[systemctl daemon-reload]', :immediately
    end
  else
    template "/etc/init.d/#{name}" do
      cookbook 'baton'
      source 'baton.init.erb'
      owner 'root'
      group 'root'
      mode '0755'
      variables unit_vars
    end
  end

  service name do
    supports status: true, restart: true, reload: true
    action %i(enable start)
  end

  # A new baton binary: the supervisor re-executes it, keeping the service (and its PID).
  # Its running image is then a deleted file; once re-executed it is not: idempotent.
  execute "baton reexec #{name}" do
    command "#{baton} --config #{config} reexec #{name}"
    only_if "pid=$(head -n1 #{pidfile} 2>/dev/null) && [ -n \"$pid\" ] && " \
            "readlink /proc/$pid/exe | grep -q ' (deleted)$'"
  end
end

action_class do
  def config_path
    "#{node['baton']['config_dir']}/#{new_resource.service_name}.toml"
  end

  def systemd?
    case new_resource.init_system
    when 'systemd' then true
    when 'sysv' then false
    else ::File.directory?('/run/systemd/system')
    end
  end

  # What service.toml.erb writes: every key of baton's config format.
  def config_variables
    r = new_resource
    env = r.java_opts ? r.env.merge('JAVA_OPTS' => r.java_opts) : r.env
    {
      name: r.service_name, command: r.command, user: r.user, group: r.group,
      workdir: r.workdir, env: env, umask: r.umask,
      port: r.port, port_range: r.port_range, listen: r.listen,
      ready: r.ready, ready_timeout: r.ready_timeout,
      stop_signal: r.stop_signal, stop_timeout: r.stop_timeout, dump_signal: r.dump_signal,
      restart_policy: r.restart_policy, restart_backoff: r.restart_backoff,
      restart_max: r.restart_max, restart_window: r.restart_window,
      log_dir: r.log_dir, log_max_size: r.log_max_size, log_keep: r.log_keep
    }
  end

  # What baton.init.erb and baton.service.erb need: the same as `baton generate`.
  def unit_variables
    {
      name: new_resource.service_name, description: new_resource.description,
      baton: node['baton']['bin_path'], config: config_path,
      pidfile: "/run/baton/#{new_resource.service_name}.pid",
      stop_seconds: BatonCookbook.stop_seconds(new_resource.stop_timeout),
      baton_restarts: new_resource.restart_policy != 'never'
    }
  end
end
