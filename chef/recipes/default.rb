# Installs baton (its two files, man page, shell completions), an optional metrics job,
# then one baton_service per entry of node['baton']['services'].

# baton is two files: the front `bin`, a static program of a few KB that sends a stop
# without loading the core, and the core it runs for everything else, found beside it as
# its own path and '-core' (src/front.rs in baton's source says why).
bin = node['baton']['bin_path']
core = "#{bin}-core"
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

# Regenerated whenever either file changes, each file replaced atomically; delayed, so it
# runs once, with both files in place, when both change.
execute 'baton man page and completions' do
  command(extras.map { |path, args| "#{bin} #{args} >#{path}.new && chmod 0644 #{path}.new && mv #{path}.new #{path}" }
               .join(' && '))
  action :nothing
end

# The core first: on a first install the front is never in place without it.
{
  core => [node['baton']['core_source'] || "#{node['baton']['source']}-core", node['baton']['core_checksum']],
  bin => [node['baton']['source'], node['baton']['checksum']]
}.each do |path, (from, sum)|
  remote_file path do
    source from
    checksum sum if sum
    owner 'root'
    group 'root'
    mode '0755'
    notifies :run, 'execute[baton man page and completions]', :delayed
  end
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
