# The two things Chef does on Debian that Itamae 1.14 lacks, added as Itamae
# and specinfra extensions rather than worked around in the recipe:
# system groups (groupadd --system) and Chef's Debian sysv service provider.
require 'itamae'

module ChefShim
  # `group 'x' do system true end`: Itamae's group resource has no system flag.
  module SystemGroup
    def action_create(options)
      return super if run_specinfra(:check_group_exists, attributes.groupname)

      run_specinfra(:add_group, attributes.groupname, gid: attributes.gid, system_group: attributes.system_group)
      updated!
    end
  end

  # What Chef::Provider::Service::Debian runs: /etc/init.d/NAME ACTION, update-rc.d to enable.
  module SysvService
    def check_is_running_under_sysv(service)
      "/etc/init.d/#{escape(service)} status"
    end

    def check_is_enabled_under_sysv(service)
      "ls /etc/rc2.d/S??#{escape(service)} /etc/rc3.d/S??#{escape(service)} " \
        "/etc/rc4.d/S??#{escape(service)} /etc/rc5.d/S??#{escape(service)}"
    end

    def enable_under_sysv(service)
      "update-rc.d #{escape(service)} defaults"
    end

    def disable_under_sysv(service)
      "update-rc.d #{escape(service)} disable"
    end

    %w(start stop restart reload).each do |action|
      define_method(:"#{action}_under_sysv") { |service| "/etc/init.d/#{escape(service)} #{action}" }
    end
  end
end

Itamae::Resource::Group.define_attribute :system_group, type: [TrueClass, FalseClass], default: false
Itamae::Resource::Group.prepend(ChefShim::SystemGroup)
Specinfra::Command::Base::Service.singleton_class.include(ChefShim::SysvService)
