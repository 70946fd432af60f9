-- POST /api/log, one log per request, over 100 device ids device_000..device_099:
-- ../shared/bench/single.lua, plus COLLECTOR_KEY, WRK_EXACTLY_ONCE and the status counts of common.lua.
local here = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
local common = dofile(here .. "common.lua")
local n = 0

request = function()
  n = n + 1
  local device = string.format("device_%03d", n % common.devices)
  local body = string.format('{"device_id":"%s","log_level":"INFO","message":"single %d reading ok",'
    .. '"log_data":{"seq":%d}%s}', device, n, n, common.numbering(device))
  return wrk.format("POST", "/api/log", common.headers(n), body)
end
