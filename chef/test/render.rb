# Renders every template the baton cookbook declares for a node, with Ruby's
# ERB exactly as Chef's template resource runs it, into OUTDIR/<path>, printing
# each path; then prints each remote_file (baton's two files), in the order the
# recipe declares them: `remote_file PATH SOURCE CHECKSUM` (`-`: none).
#   ruby chef/test/render.rb NODE.json OUTDIR
require 'fileutils'
require_relative 'itamae/chef_shim'

node_json, outdir = ARGV
abort 'usage: render.rb NODE.json OUTDIR' unless outdir
node = ChefShim.node(JSON.parse(File.read(node_json)))
recorder = ChefShim::Recorder.new(node)
ChefShim.run_recipe(recorder, node)
recorder.templates.each do |call|
  out = File.join(outdir, call.name)
  FileUtils.mkdir_p(File.dirname(out))
  File.write(out, recorder.render(call))
  File.chmod(call.properties.fetch(:mode, '0644').to_i(8), out)
  puts out
end
recorder.calls.select { |call| call.type == :remote_file }.each do |call|
  puts ['remote_file', call.name, call.properties.fetch(:source), call.properties.fetch(:checksum, '-')].join(' ')
end
