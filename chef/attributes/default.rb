# Where baton comes from and where it goes: two files, the front (`baton`) at bin_path and
# its core beside it at "#{bin_path}-core" (the front runs the core from there).
default['baton']['source'] = 'file:///usr/local/src/baton/baton'
default['baton']['checksum'] = nil
# nil: the front's source with '-core' after it.
default['baton']['core_source'] = nil
default['baton']['core_checksum'] = nil
default['baton']['bin_path'] = '/usr/local/bin/baton'
default['baton']['config_dir'] = '/etc/baton'
# The man page and shell completions go under here (man/man1, bash-completion, zsh, fish).
default['baton']['share_dir'] = '/usr/local/share'

# Metrics for node_exporter's textfile collector: with a directory set, a cron job
# writes DIR/baton.prom (`baton metrics --output`) on this schedule. nil: no job.
default['baton']['metrics']['textfile_dir'] = nil
default['baton']['metrics']['schedule'] = '* * * * *'
default['baton']['metrics']['cron_file'] = '/etc/cron.d/baton-metrics'

# 'auto' picks systemd where it runs (/run/systemd/system exists), else the LSB init script.
default['baton']['init_system'] = 'auto'

# Services to supervise: name => properties of baton_service (see README), e.g.
#   default['baton']['services']['the-clj-service'] = {
#     'command' => ['java', '-jar', '/var/lib/the-clj-service/app.jar', '--port', '{port}'],
#     'port' => 8080, 'ready' => { 'http' => 'http://127.0.0.1:{port}/health' },
#   }
default['baton']['services'] = {}

# Defaults of every baton_service; a service's own property wins.
default['baton']['defaults']['umask'] = '027'
default['baton']['defaults']['ready_timeout'] = '90s'
default['baton']['defaults']['stop_signal'] = 'TERM'
default['baton']['defaults']['stop_timeout'] = '30s'
default['baton']['defaults']['dump_signal'] = nil
default['baton']['defaults']['restart_policy'] = 'on-failure'
default['baton']['defaults']['restart_backoff'] = %w(100ms 30s)
default['baton']['defaults']['restart_max'] = 5
default['baton']['defaults']['restart_window'] = '60s'
default['baton']['defaults']['log_max_size'] = '100MB'
default['baton']['defaults']['log_keep'] = 10
