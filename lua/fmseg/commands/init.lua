-- fmseg.commands — sub-commands defined in their own modules. Each module
-- registers itself with fmseg.cli.command(name, usage, help, fn) when
-- required; fmseg.cli loads this module before dispatching.
local MODULES = {
  "fmseg.commands.classify",
  "fmseg.commands.sam",
  "fmseg.commands.amg",
  "fmseg.commands.eval",
  "fmseg.commands.merge",
  "fmseg.commands.table",
}

-- A module not (yet) present is skipped, so one missing file cannot take
-- every command down; errors inside a module still surface.
for _, name in ipairs(MODULES) do
  local ok, err = pcall(require, name)
  if not ok and not tostring(err):find("module '" .. name .. "' not found", 1, true) then
    error(err, 0)
  end
end

return {}
