# Value formatting shared by the cookbook's templates and baton_service.
module BatonCookbook
  module_function

  # A Ruby value as TOML: strings, integers, booleans, arrays and inline tables.
  def toml(value)
    case value
    when String, Symbol then toml_string(value.to_s)
    when Integer, true, false then value.to_s
    when Array then "[#{value.map { |v| toml(v) }.join(', ')}]"
    when Hash then "{ #{value.map { |k, v| "#{toml_key(k)} = #{toml(v)}" }.join(', ')} }"
    else raise ArgumentError, "cannot write #{value.inspect} as TOML"
    end
  end

  def toml_key(key)
    key.to_s.match?(/\A[A-Za-z0-9_-]+\z/) ? key.to_s : toml_string(key.to_s)
  end

  def toml_string(str)
    escaped = str.gsub(/["\\\u0000-\u001f\u007f]/) do |c|
      { '"' => '\\"', '\\' => '\\\\', "\n" => '\\n', "\t" => '\\t', "\r" => '\\r' }[c] || format('\\u%04X', c.ord)
    end
    "\"#{escaped}\""
  end

  # Control characters become spaces: the value lands on one line (header, assignment).
  def one_line(str)
    str.to_s.gsub(/[\u0000-\u001f\u007f-\u009f]/, ' ')
  end

  # Single-quoted for sh, as `baton generate init-script` writes it.
  def sh(str)
    "'#{one_line(str).gsub("'", "'\\\\''")}'"
  end

  # One word of a systemd Exec*= line, as `baton generate systemd-unit` writes it.
  def unit_arg(str)
    s = str.to_s.gsub('%', '%%').gsub('$', '$$')
    return s unless s.empty? || s.match?(/[\s"'\\;]/)

    "\"#{s.gsub('\\') { '\\\\' }.gsub('"', '\\"')}\""
  end

  # Whole seconds systemd waits for baton to stop: baton's stop timeout plus 15 s, rounded up.
  def stop_seconds(duration)
    (seconds(duration) + 15).ceil
  end

  # baton's duration syntax ("100ms", "30s", "5m", "1h") in seconds.
  def seconds(duration)
    m = duration.to_s.strip.match(/\A(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)\z/)
    raise ArgumentError, "#{duration.inspect} is not a duration (e.g. \"30s\")" unless m

    m[1].to_f * { 'ms' => 0.001, 's' => 1, 'm' => 60, 'min' => 60, 'h' => 3600 }.fetch(m[2])
  end
end
