# Installs baton (binary, man page, shell completions), an optional metrics job,
# then one baton_service per entry of node['baton']['services'].

bin = node['baton']['bin_path']
share = node['baton']['share_dir']
# What the binary generates from its own command-line definition, and where it goes.
extras = {
  "#{share}/man/man1/baton.1" => 'man',
  "#{share}/bash-completion/completions/baton" => 'completions bash',
  "#{share}/zsh/site-functions/_baton" => 'completions zsh',
  "#{share}/fish/vendor_completions.d/baton.fish" => 'completions fish'
}

extras.each_key do |path|
  directory ::File.dirname(path) do
    owner 'root'
    group 'root'
    mode '0755'
    recursive true
  end
end

# Regenerated whenever the binary changes, each file replaced atomically.
execute 'baton man page and completions' do
  command(extras.map { |path, args| "#{bin} #{args} >#{path}.new && chmod 0644 #{path}.new && mv #{path}.new #{path}" }
               .join(' && '))
  action :nothing
end

remote_file bin do
  source node['baton']['source']
  checksum node['baton']['checksum'] if node['baton']['checksum']
  owner 'root'
  group 'root'
  mode '0755'
  notifies :run, 'execute[baton man page and completions]', :immediately
end

directory node['baton']['config_dir'] do
  owner 'root'
  group 'root'
  mode '0755'
end

textfile_dir = node['baton']['metrics']['textfile_dir']
if textfile_dir
  directory textfile_dir do
    owner 'root'
    group 'root'
    mode '0755'
    recursive true
  end

  template node['baton']['metrics']['cron_file'] do
    source 'baton-metrics.cron.erb'
    owner 'root'
    group 'root'
    mode '0644'
    variables(
      schedule: node['baton']['metrics']['schedule'],
      bin: bin,
      config_dir: node['baton']['config_dir'],
      output: ::File.join(textfile_dir, 'baton.prom')
    )
  end
end

node['baton']['services'].each do |service, settings|
  baton_service service do
    settings.each { |property, value| send(property, value) }
  end
end
