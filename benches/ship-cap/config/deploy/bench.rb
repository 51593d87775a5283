# The stage benches/ship deploys to; hosts come from $HOSTS (config/deploy.rb).
