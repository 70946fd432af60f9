-- What batch5.lua and single.lua share (loaded by each with dofile, in every Lua state wrk
-- makes: its main one, which runs setup() and done(), and one per thread, which runs
-- init(), request() and response()).
--
--   COLLECTOR_KEY=<secret>  every request sends "Authorization: Bearer <secret>" (a fleet key for device_*)
--   WRK_EXACTLY_ONCE=1      every request sends a unique Idempotency-Key, and every log a boot_id and a
--                           seq (the device's numbering: collector/web/schemas.py, both or neither)
--   WRK_RUN_ID=<token>      names this run in the boot ids (default: time and random bytes), so that
--                           (device_id, boot_id, seq) never repeats across runs and python -m bench.wrk
--                           can find this run's rows
--
-- done() prints one "wrk-status <code> <count>" line per HTTP status answered, and for each
-- status outside 2xx one "wrk-sample <code> <body>" line (the first such answer, shortened).
local common = {devices = 100}

common.exactly_once = os.getenv("WRK_EXACTLY_ONCE") == "1"

local headers = {["Content-Type"] = "application/json"}
local key = os.getenv("COLLECTOR_KEY")
if key and key ~= "" then headers["Authorization"] = "Bearer " .. key end

-- Main state: wrk calls setup() once per thread before any thread starts.
local threads = {}
local main_run_id = nil

local function random_token()
  local urandom = io.open("/dev/urandom", "rb")
  if urandom == nil then return string.format("%d", os.time()) end
  local bytes = urandom:read(4)
  urandom:close()
  return string.format("%d-%02x%02x%02x%02x", os.time(), bytes:byte(1, 4))
end

function setup(thread)
  if main_run_id == nil then
    main_run_id = os.getenv("WRK_RUN_ID")
    if main_run_id == nil or main_run_id == "" then main_run_id = random_token() end
  end
  threads[#threads + 1] = thread
  -- Globals of the thread's state (thread:set cannot reach this file's locals).
  thread:set("thread_index", #threads)
  thread:set("run_id", main_run_id)
end

-- Thread state. Each thread numbers its own logs: its own boot_id, so two threads sending
-- for the same device never send the same (device_id, boot_id, seq).
local boot_id = nil
local seqs = {}
statuses = {}  -- globals, so done() can read them with thread:get
samples = {}

function init(args)
  boot_id = string.format("wrk-%s-t%d", run_id or "x", thread_index or 0)
end

-- The headers of request number n (of this thread). One table, changed in place:
-- wrk.format serializes it at once, so nothing keeps the previous request's key.
function common.headers(n)
  if common.exactly_once then headers["Idempotency-Key"] = boot_id .. "-" .. n end
  return headers
end

-- The fields that number a log of `device` (with its leading comma), or "" when off.
function common.numbering(device)
  if not common.exactly_once then return "" end
  local seq = (seqs[device] or 0) + 1
  seqs[device] = seq
  return string.format(',"boot_id":"%s","seq":%d', boot_id, seq)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status < 200 or status > 299) and samples[status] == nil then
    samples[status] = (string.gsub(string.sub(body or "", 1, 300), "%s+", " "))
  end
end

-- Main state again, after the run: the threads' counts, added up.
function done(summary, latency, requests)
  local totals, first = {}, {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do totals[status] = (totals[status] or 0) + count end
    for status, body in pairs(thread:get("samples") or {}) do first[status] = first[status] or body end
  end
  for status, count in pairs(totals) do io.write(string.format("wrk-status %d %d\n", status, count)) end
  for status, body in pairs(first) do io.write(string.format("wrk-sample %d %s\n", status, body)) end
end

return common
