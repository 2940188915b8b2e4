-- The jobs a lane's last claim leased that are still running under it: after a claim whose
-- reply was lost (the connection cut, or a timeout, after Redis ran it) the worker does not
-- know it holds them. It asks on its next pass of that lane and queue, and gives them back at
-- once instead of leaving them to expire: each would otherwise cost an attempt it never ran,
-- and wait out its lease.
--
-- Asking also fences the lane: its calls numbered up to ARGV[3] (the lost one and any before it)
-- claim nothing should their requests reach Redis only now. A request held up in a stalled
-- network outlives the connection the worker closed on it (the kernel keeps resending it), and
-- a claim it ran after this question would lease jobs that nobody looks for.
--
-- KEYS[1] the lane's last claim (exchange.lua): "<id> <delivery>,...", expiring with the lease
-- KEYS[2] events channel (never a key: see _event.lua, "slot in migration")
-- KEYS[3] the lane's fence (exchange.lua): the lowest call number still allowed to claim
-- ARGV[1] job record key prefix   ARGV[2] worker id   ARGV[3] the lane's last call number, or '':
-- no fence (a caller that does not number its calls)
-- Returns five entries a job, as a claim does: id, envelope, attempt, delivery, ready_at. The
-- worker skips those it holds (the last claim's reply arrived, and the lost call ran nothing).
--- @include "_event.lua"

-- Never lowered (a question that itself arrives late); a day outlives any resent request.
local upto = tonumber(ARGV[3])
if upto then
  redis.call('SET', KEYS[3], math.max(upto + 1, fence_of(KEYS[3])), 'EX', 86400)
end
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
