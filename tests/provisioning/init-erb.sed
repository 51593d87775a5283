# init.d/baton.init.in -> chef/templates/baton.init.erb: the same script, placeholders as ERB.
s/@NAME_SH@/<%= BatonCookbook.sh(@name) %>/g
s/@DESCRIPTION_SH@/<%= BatonCookbook.sh(@description) %>/g
s/@BATON_SH@/<%= BatonCookbook.sh(@baton) %>/g
s/@CONFIG_SH@/<%= BatonCookbook.sh(@config) %>/g
s/@NAME@/<%= BatonCookbook.one_line(@name) %>/g
s/@DESCRIPTION@/<%= BatonCookbook.one_line(@description) %>/g
s/@PIDFILE@/<%= BatonCookbook.one_line(@pidfile) %>/g
