-- POST /api/logs/batch with 5 logs (one of each level) of one device, over 100 device ids
-- device_000..device_099: ../shared/bench/batch5.lua, plus COLLECTOR_KEY, WRK_EXACTLY_ONCE and
-- the status counts of common.lua.
local here = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
local common = dofile(here .. "common.lua")
local levels = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
local n = 0

request = function()
  n = n + 1
  local device = string.format("device_%03d", n % common.devices)
  local parts = {}
  for i = 1, 5 do
    parts[i] = string.format(
      '{"device_id":"%s","log_level":"%s","message":"bench %d-%d temperature reading ok",'
      .. '"log_data":{"seq":%d,"t":21.5}%s}',
      device, levels[i], n, i, n, common.numbering(device))
  end
  return wrk.format("POST", "/api/logs/batch", common.headers(n), '{"logs":[' .. table.concat(parts, ",") .. ']}')
end
