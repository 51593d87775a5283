# Loads the baton cookbook's own Chef files -- attributes/default.rb,
# recipes/default.rb, resources/service.rb, libraries/, templates/ -- and hands
# each Chef resource call to a backend: Itamae (a real converge) or a recorder
# (render the templates only). Chef Infra Client is not installable here;
# Itamae's DSL is close to Chef's, so the translation is a table, and a Chef
# property with no Itamae equivalent is an error, never silently dropped.
require 'json'
require 'digest'
require 'erb'

module ChefShim
  COOKBOOK = File.expand_path('../..', __dir__)

  # Chef's `lazy { ... }`: evaluated against the resource when read.
  Lazy = Struct.new(:block)

  # `default['a']['b'] = v` in an attribute file: intermediate hashes spring into being.
  class AttributeLevel < Hash
    def [](key)
      fetch(key.to_s) { store(key.to_s, AttributeLevel.new) }
    end

    def []=(key, value)
      store(key.to_s, value)
    end
  end

  # What an attribute file sees: only the default precedence level is used by this cookbook.
  class AttributeFile
    attr_reader :default

    def initialize
      @default = AttributeLevel.new
    end

    def load(path)
      instance_eval(File.read(path), path)
      self
    end
  end

  module_function

  # The node a recipe sees: default attributes, then the node JSON (normal level) on top,
  # merged as Chef merges precedence levels (hashes merge, anything else is replaced),
  # and frozen like Chef's immutable merged view.
  def node(normal = {})
    attrs = Dir[File.join(COOKBOOK, 'attributes', '*.rb')].each_with_object(AttributeFile.new) { |f, a| a.load(f) }
    normal = normal.except('run_list')
    deep_freeze(deep_merge(plain(attrs.default), normal))
  end

  def plain(value)
    value.is_a?(Hash) ? value.each_with_object({}) { |(k, v), h| h[k.to_s] = plain(v) } : value
  end

  def deep_merge(low, high)
    return high unless low.is_a?(Hash) && high.is_a?(Hash)

    low.merge(high) { |_key, l, h| deep_merge(l, h) }
  end

  def deep_freeze(value)
    case value
    when Hash then value.each_value { |v| deep_freeze(v) }
    when Array then value.each { |v| deep_freeze(v) }
    end
    value.freeze
  end

  # Loads libraries/, the custom resources and the recipe; every resource goes to `backend`.
  def run_recipe(backend, node, recipe: 'default')
    Dir[File.join(COOKBOOK, 'libraries', '*.rb')].each { |f| load f }
    customs = Dir[File.join(COOKBOOK, 'resources', '*.rb')].map { |f| CustomResource.load(f) }
    dsl = Dsl.new(backend, node, customs)
    path = File.join(COOKBOOK, 'recipes', "#{recipe}.rb")
    dsl.instance_eval(File.read(path), path)
  end

  # The recipe DSL: built-in resources go to the backend, custom ones run their action.
  class Dsl
    attr_reader :node

    def initialize(backend, node, customs)
      @backend = backend
      @node = node
      @customs = customs
    end

    def method_missing(type, name = nil, enclosing = nil, &block)
      custom = @customs.find { |c| c.provides == type }
      return custom.run(self, name, &block) if custom
      return super if name.nil?

      call = ResourceCall.new(type, name, @node, enclosing)
      call.instance_eval(&block) if block
      @backend.declare(call)
    end

    def respond_to_missing?(*)
      true
    end
  end

  # One Chef resource declaration: its properties as set in the block. A BasicObject,
  # so that properties named like Kernel methods (`system true`) reach method_missing.
  class ResourceCall < BasicObject
    attr_reader :type, :name, :properties, :notifications, :node

    def initialize(type, name, node, enclosing)
      @type = type
      @name = name
      @node = node
      @enclosing = enclosing
      @properties = {}
      @notifications = []
    end

    def notifies(action, target, timing = :delayed)
      @notifications << [action, target, timing]
    end

    # One argument sets a property; none is a call on the enclosing action, as Chef
    # forwards `new_resource` and action_class helpers from a nested resource's block.
    def method_missing(property, *args)
      return @enclosing.__send__(property) if args.empty? && @enclosing

      ::Kernel.raise ::ArgumentError, "#{@type}[#{@name}]: #{property} needs one value" unless args.size == 1

      @properties[property] = args.first
    end

    def respond_to_missing?(*)
      true
    end
  end

  # A resources/*.rb file: properties with Chef's semantics, and actions run in a Dsl.
  class CustomResource
    def self.load(path)
      new.tap { |c| c.instance_eval(File.read(path), path) }
    end

    def initialize
      @properties = {}
      @actions = {}
      @helpers = Module.new
      @default_action = :nothing
    end

    def provides(name = nil)
      name ? @provides = name : @provides
    end

    def unified_mode(_on); end

    def lazy(&block)
      Lazy.new(block)
    end

    def property(name, type = nil, **options)
      @properties[name] = options.merge(type:)
    end

    def default_action(action)
      @default_action = action
    end

    def action(name, &block)
      @actions[name] = block
    end

    def action_class(&)
      @helpers.module_eval(&)
    end

    def run(dsl, name, &block)
      instance = Instance.new(@provides, @properties, name, dsl.node)
      instance.instance_eval(&block) if block
      instance.validate!
      [instance.action || @default_action].flatten.each do |action|
        next if action == :nothing

        context = ActionContext.new(dsl, instance)
        context.extend(@helpers)
        context.instance_eval(&@actions.fetch(action))
      end
    end
  end

  # A declared custom resource: `prop value` sets, `prop` reads (defaults and lazy resolved).
  class Instance
    attr_reader :node

    def initialize(type, properties, name, node)
      @type = type
      @properties = properties
      @name = name
      @node = node
      @values = {}
      properties.each do |prop, spec|
        define_singleton_method(prop) do |*args|
          raise ArgumentError, "#{type}[#{name}]: #{prop} takes one value" if args.size > 1

          args.empty? ? read(prop, spec) : @values[prop] = check(prop, spec, args.first)
        end
      end
    end

    def action(value = nil)
      value ? @action = value : @action
    end

    def validate!
      @properties.each do |prop, spec|
        raise ArgumentError, "#{@type}[#{@name}]: #{prop} is required" if spec[:required] && !@values.key?(prop)

        check(prop, spec, read(prop, spec))
      end
    end

    private

    def read(prop, spec)
      value = @values.fetch(prop) do
        next @name if spec[:name_property]

        spec[:default]
      end
      value.is_a?(Lazy) ? instance_exec(&value.block) : value
    end

    def check(prop, spec, value)
      return value if value.nil? || value.is_a?(Lazy)

      types = Array(spec[:type]).compact
      unless types.empty? || types.any? { |t| t.is_a?(Module) ? value.is_a?(t) : t == value }
        raise ArgumentError, "#{@type}[#{@name}]: #{prop} must be #{types.inspect}, not #{value.inspect}"
      end
      if spec[:equal_to] && !spec[:equal_to].include?(value)
        raise ArgumentError, "#{@type}[#{@name}]: #{prop} must be one of #{spec[:equal_to].inspect}"
      end

      value
    end
  end

  # Where an action's body runs: `new_resource`, `node`, nested resources, action_class helpers.
  class ActionContext
    attr_reader :new_resource

    def initialize(dsl, new_resource)
      @dsl = dsl
      @new_resource = new_resource
    end

    def node
      @dsl.node
    end

    # Chef's shell_out (Mixlib::ShellOut): runs a command through the shell, for a guard
    # evaluated while the action runs.
    ShellOut = Struct.new(:stdout, :stderr, :exitstatus)

    def shell_out(command)
      require 'open3'
      out, err, status = Open3.capture3(command)
      ShellOut.new(out, err, status.exitstatus)
    end

    def method_missing(type, name = nil, &)
      return super if name.nil?

      @dsl.method_missing(type, name, self, &)
    end

    def respond_to_missing?(*)
      true
    end
  end

  # ERB as Chef's template resource runs it: variables become @ivars, `-%>` trims.
  class RenderContext
    def initialize(variables, node)
      @node = node
      variables.each { |k, v| instance_variable_set("@#{k}", v) }
    end

    attr_reader :node

    def render(path)
      erb = ERB.new(File.read(path), trim_mode: '-')
      erb.filename = path
      erb.result(binding)
    end
  end

  def template_path(call)
    cookbook = call.properties.fetch(:cookbook, 'baton')
    raise ArgumentError, "template[#{call.name}]: only the baton cookbook is loaded, not #{cookbook}" unless cookbook == 'baton'

    File.join(COOKBOOK, 'templates', call.properties.fetch(:source))
  end

  # Records every resource; renders templates to files on request (no converge).
  class Recorder
    attr_reader :calls

    def initialize(node)
      @node = node
      @calls = []
    end

    def declare(call)
      @calls << call
    end

    def templates
      @calls.select { |c| c.type == :template }
    end

    def render(call)
      RenderContext.new(call.properties.fetch(:variables, {}), @node).render(ChefShim.template_path(call))
    end
  end

  # Chef property => Itamae attribute, per resource type. `nil` means "no effect here".
  ITAMAE = {
    group: { system: :system_group },
    user: { system: :system_user, gid: :gid, home: :home, shell: :shell, manage_home: :create_home },
    # Itamae's directory always creates parents (mkdir -p), as Chef's does with `recursive true`.
    directory: { owner: :owner, group: :group, mode: :mode, recursive: nil },
    template: { cookbook: nil, source: :source, variables: :variables, owner: :owner, group: :group,
                mode: :mode, verify: :verify },
    remote_file: { source: :source, checksum: nil, owner: :owner, group: :group, mode: :mode },
    execute: { command: :command, action: :action, only_if: :only_if },
    service: { supports: nil, action: :action }
  }.freeze

  # Declares each Chef resource as the Itamae resource doing the same, in the Itamae recipe `ctx`.
  class Itamae
    def initialize(ctx)
      @ctx = ctx
    end

    def declare(call)
      table = ITAMAE.fetch(call.type) { raise ArgumentError, "#{call.type}[#{call.name}] has no Itamae equivalent here" }
      attrs = {}
      call.properties.each do |prop, value|
        raise ArgumentError, "#{call.type}[#{call.name}]: property #{prop} has no Itamae equivalent" unless table.key?(prop)
        next if table[prop].nil?

        attrs[table[prop]] = value
      end
      attrs[:source] = ChefShim.template_path(call) if call.type == :template
      attrs[:source] = local_source(call) if call.type == :remote_file
      check = attrs.delete(:verify)&.gsub('%{path}', call.name)
      attrs[:provider] = ChefShim.service_provider if call.type == :service
      attrs[:gid] = attrs[:gid].to_s if attrs[:gid]
      notifications = call.notifications
      @ctx.send(call.type, call.name) do
        attrs.each { |k, v| send(k, v) }
        verify(check) if check
        notifications.each { |n| notifies(*n) }
      end
    end

    private

    # Chef's remote_file fetches URLs; a file:// source is a local copy, checked against `checksum`.
    def local_source(call)
      url = call.properties.fetch(:source)
      unless url.start_with?('file://')
        raise ArgumentError, "remote_file[#{call.name}]: only file:// sources work offline, not #{url}"
      end

      path = url.delete_prefix('file://')
      sum = call.properties[:checksum]
      if sum && Digest::SHA256.file(path).hexdigest != sum
        raise ArgumentError, "remote_file[#{call.name}]: #{path} does not match checksum #{sum}"
      end

      path
    end
  end

  # Chef's service provider on a host without systemd is Debian's sysv one; on systemd hosts, systemd.
  def service_provider
    File.directory?('/run/systemd/system') ? :systemd : :sysv
  end
end
