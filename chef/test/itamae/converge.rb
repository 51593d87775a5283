# Itamae recipe: converges the baton cookbook's default recipe on this machine,
# through the very same Chef files (see chef_shim.rb).
#   itamae local -j NODE.json chef/test/itamae/converge.rb
require_relative 'chef_shim'
require_relative 'itamae_ext'

ChefShim.run_recipe(ChefShim::Itamae.new(self), ChefShim.node(JSON.parse(node.mash.to_json)))
