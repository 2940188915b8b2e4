-- The jobs Redis leased to a worker that never heard of them: the reply of the call that
-- claimed them was lost (the connection cut, or a timeout, after Redis ran it). The worker asks
-- after such a failure, with none of its calls in flight, and gives them back at once instead
-- of leaving them to expire: each would otherwise cost an attempt it never ran, and wait out
-- its lease.
--
-- KEYS[1] active zset   KEYS[2] events channel (never a key: see _event.lua, "slot in migration")
-- ARGV[1] job record key prefix   ARGV[2] worker id
-- ARGV[3] Redis time (ms) before the worker's first claim: a claim older than that was a
--         previous process's under the same id, which died with its jobs running; those
--         attempts count, and recovery takes them back.
-- Returns five entries a job, as a claim does: id, envelope, attempt, delivery, ready_at.
-- Reads every lease of the queue (all workers'), so it runs only after a failed call.
--- @include "_event.lua"

local since = tonumber(ARGV[3])
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local state = record_fields(ARGV[1] .. id, 'status', 'worker', 'started_at', 'envelope', 'attempts',
    'delivery', 'enqueued_at', 'run_at') or {}
  if state[1] == 'running' and state[2] == ARGV[2] and (tonumber(state[3]) or 0) >= since then
    out[#out + 1] = id
    out[#out + 1] = state[4] or ''
    out[#out + 1] = tonumber(state[5]) or 0
    out[#out + 1] = tonumber(state[6]) or 0
    out[#out + 1] = math.max(tonumber(state[7]) or 0, tonumber(state[8]) or 0)
  end
end
return out
