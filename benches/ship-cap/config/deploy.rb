# Everything comes from the environment benches/ship sets.
lock ">= 3.0"
set :application, "app"
set :deploy_to, ENV.fetch("DEPLOY_TO")
set :keep_releases, 5
set :format, :airbrussh
set :log_level, :warn  # HOSTS and ROLES would be host filters to Capistrano: hence BENCH_HOSTS
set :pty, false
set :ssh_options, {
  user: "root",
  port: Integer(ENV.fetch("SSH_PORT")),
  keys: [ENV.fetch("CAP_KEY")],
  keys_only: true,
  auth_methods: ["publickey"],
  user_known_hosts_file: ENV.fetch("KNOWN_HOSTS"),
  verify_host_key: :always,
}
ENV.fetch("BENCH_HOSTS").split.each { |h| server h, roles: %w[app] }

namespace :bench do
  desc "Build the artifact once, locally"
  task :build do
    run_locally { execute :sh, "-c", ENV.fetch("BUILD").shellescape }
  end

  desc "Upload the artifact and the generated properties into the new release"
  task :upload do
    on roles(:app) do |host|
      execute :mkdir, "-p", release_path
      # net-scp cannot copy "dir/." into an existing directory: one upload per entry.
      art = ENV.fetch("ARTIFACT")
      Dir.children(art).sort.each { |f| upload! File.join(art, f), release_path.to_s, recursive: true }
      props = "version=#{ENV.fetch('VERSION')}\nenvironment=bench\nhost=#{host.hostname}\nrelease=#{release_timestamp}\n"
      upload! StringIO.new(props), release_path.join("service.properties").to_s
      upload! StringIO.new("unknown\n"), release_path.join("REVISION").to_s
    end
  end

  desc "Hand the service over to the new release with baton"
  task :restart do
    on roles(:app) do
      execute ENV.fetch("REMOTE_BATON"), "--config", ENV.fetch("SERVICE_CONFIG"), "deploy",
              "--release", release_path.to_s, "--keep", "5"
    end
  end
end

before "deploy:starting", "bench:build"
after "deploy:new_release_path", "bench:upload"
# Before Capistrano switches `current`, so baton records the right previous release.
before "deploy:publishing", "bench:restart"
