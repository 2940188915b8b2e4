-- The jobs a lane's last claim leased that are still running under it: after a claim whose
-- reply was lost (the connection cut, or a timeout, after Redis ran it) the worker does not
-- know it holds them. It asks on its next pass of that lane and queue, and gives them back at
-- once instead of leaving them to expire: each would otherwise cost an attempt it never ran,
-- and wait out its lease.
--
-- KEYS[1] the lane's last claim (exchange.lua): "<id> <delivery>,...", expiring with the lease
-- KEYS[2] events channel (never a key: see _event.lua, "slot in migration")
-- ARGV[1] job record key prefix   ARGV[2] worker id
-- Returns five entries a job, as a claim does: id, envelope, attempt, delivery, ready_at. The
-- worker skips those it holds (the last claim's reply arrived, and the lost call ran nothing).
--- @include "_event.lua"

local last = redis.call('GET', KEYS[1])
local out = {}
if not last then
  return out
end
for id, delivery in string.gmatch(last, '([^ ,]+) (%d+)') do
  local state = record_fields(ARGV[1] .. id, 'status', 'worker', 'delivery', 'envelope', 'attempts',
    'enqueued_at', 'run_at') or {}
  if state[1] == 'running' and state[2] == ARGV[2] and state[3] == delivery then
    out[#out + 1] = id
    out[#out + 1] = state[4] or ''
    out[#out + 1] = tonumber(state[5]) or 0
    out[#out + 1] = tonumber(delivery)
    out[#out + 1] = math.max(tonumber(state[6]) or 0, tonumber(state[7]) or 0)
  end
end
return out
