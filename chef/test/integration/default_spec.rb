# Serverspec: what a converge of the baton cookbook leaves on the host for one service.
#   SERVICE=NAME PORT=N BATON=/usr/local/bin/baton BATON_SHA256=... BATON_CORE_SHA256=... \
#     rspec default_spec.rb
require 'serverspec'
set :backend, :exec

name = ENV.fetch('SERVICE')
port = Integer(ENV.fetch('PORT'))
baton = ENV.fetch('BATON')
config = "/etc/baton/#{name}.toml"
pidfile = "/run/baton/#{name}.pid"

# baton is two files: the front at BATON, and the core it runs from beside it.
{ 'the baton front' => [baton, 'BATON_SHA256'], 'the baton core' => ["#{baton}-core", 'BATON_CORE_SHA256'] }
  .each do |what, (path, sum)|
    describe what do
      subject { file(path) }

      it { is_expected.to be_file }
      it { is_expected.to be_mode 755 }
      it { is_expected.to be_owned_by 'root' }
      its(:sha256sum) { is_expected.to eq ENV.fetch(sum) }
    end
  end

describe command("#{baton} --version") do
  its(:exit_status) { is_expected.to eq 0 }
  its(:stdout) { is_expected.to match(/\Abaton \d+\.\d+\.\d+\n\z/) }
end

describe group(name) do
  it { is_expected.to exist }
end

describe user(name) do
  it { is_expected.to exist }
  it { is_expected.to belong_to_primary_group name }
  it { is_expected.to have_login_shell '/usr/sbin/nologin' }
  it { is_expected.to have_home_directory "/var/lib/#{name}" }
end

describe 'the account is a system account' do
  subject { command("id -u #{name}; id -g #{name}") }

  its(:stdout) { is_expected.to(satisfy { |ids| ids.split.all? { |id| id.to_i.between?(1, 999) } }) }
end

["/var/lib/#{name}", "/var/log/#{name}"].each do |dir|
  describe file(dir) do
    it { is_expected.to be_directory }
    it { is_expected.to be_mode 750 }
    it { is_expected.to be_owned_by name }
    it { is_expected.to be_grouped_into name }
  end
end

describe file(config) do
  it { is_expected.to be_file }
  it { is_expected.to be_mode 640 }
  it { is_expected.to be_owned_by 'root' }
  it { is_expected.to be_grouped_into name }
end

describe command("#{baton} --config #{config} check #{name}") do
  its(:exit_status) { is_expected.to eq 0 }
end

describe file("/etc/init.d/#{name}") do
  it { is_expected.to be_mode 755 }
  it { is_expected.to be_owned_by 'root' }
  its(:content) { is_expected.to eq `#{baton} --config #{config} generate init-script #{name}` }
end

describe 'the service is enabled in runlevels 2-5' do
  subject { command("ls /etc/rc2.d/S??#{name} /etc/rc3.d/S??#{name} /etc/rc4.d/S??#{name} /etc/rc5.d/S??#{name}") }

  its(:exit_status) { is_expected.to eq 0 }
end

describe command("/etc/init.d/#{name} status") do
  its(:exit_status) { is_expected.to eq 0 }
end

describe port(port) do
  it { is_expected.to be_listening.on('127.0.0.1').with('tcp') }
end

describe command("curl -fsS http://127.0.0.1:#{port}/") do
  its(:stdout) { is_expected.to eq "ok\n" }
end

describe 'the supervisor runs the core' do
  subject { command("readlink \"/proc/$(cat #{pidfile})/exe\"") }

  its(:stdout) { is_expected.to eq "#{baton}-core\n" }
end

describe 'the supervisor runs as root, the service as its user' do
  subject { command("ps -o user= -p \"$(cat #{pidfile})\"; ps -o user= --ppid \"$(cat #{pidfile})\"") }

  its(:stdout) { is_expected.to eq "root\n#{name}\n" }
end
