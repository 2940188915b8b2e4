-- limit_claim.lua: the bare loop's claim. Moves up to ARGV[1] jobs from the pending list to
-- the active lease zset in one call: assigns each an id, writes its record hash and publishes
-- a "started" event. Never claims more than the free slots the worker asked for.
--
-- KEYS[1] pending list     (limit:{q}:pending)     JSON envelopes pushed by any producer
-- KEYS[2] active zset      (limit:{q}:active)      job id -> lease deadline (ms)
-- KEYS[3] id counter       (limit:{q}:seq)
-- KEYS[4] events channel   (limit:{q}:events)
-- ARGV[1] how many to claim at most (the worker's free slots, >= 1)
-- ARGV[2] now (ms)
-- ARGV[3] lease deadline (ms)
-- ARGV[4] worker id
-- ARGV[5] record key prefix (limit:{q}:job:), same hash tag as the keys above
-- Returns a flat array id1, envelope1, id2, envelope2, ... (empty when nothing is pending).
local envelopes = redis.call('LPOP', KEYS[1], ARGV[1])
if not envelopes then
  return {}
end
local n = #envelopes
local base = redis.call('INCRBY', KEYS[3], n) - n
local out = {}
for i = 1, n do
  local id = tostring(base + i)
  redis.call('HSET', ARGV[5] .. id, 'status', 'running', 'envelope', envelopes[i],
    'attempt', 1, 'worker', ARGV[4], 'started_at', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], id)
  redis.call('PUBLISH', KEYS[4], '{"event":"started","job_id":"' .. id .. '","worker":"' .. ARGV[4] .. '"}')
  out[2 * i - 1] = id
  out[2 * i] = envelopes[i]
end
return out
