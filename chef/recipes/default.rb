# Installs baton, then one baton_service per entry of node['baton']['services'].

remote_file node['baton']['bin_path'] do
  source node['baton']['source']
  checksum node['baton']['checksum'] if node['baton']['checksum']
  owner 'root'
  group 'root'
  mode '0755'
end

directory node['baton']['config_dir'] do
  owner 'root'
  group 'root'
  mode '0755'
end

node['baton']['services'].each do |service, settings|
  baton_service service do
    settings.each { |property, value| send(property, value) }
  end
end
