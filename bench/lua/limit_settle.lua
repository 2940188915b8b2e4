-- limit_settle.lua: the bare loop's batched settle. For each finished job still leased here
-- (ZREM returns 1: a worker that lost its lease cannot settle), records the outcome, lets the
-- record expire and publishes the outcome event.
--
-- KEYS[1] active zset      (limit:{q}:active)
-- KEYS[2] events channel   (limit:{q}:events)
-- ARGV[1] now (ms)
-- ARGV[2] record TTL (s)
-- ARGV[3] record key prefix (limit:{q}:job:)
-- ARGV[4..] pairs: job id, status ("completed" or "failed")
-- Returns how many jobs were settled.
local settled = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local status = ARGV[i + 1]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local key = ARGV[3] .. id
    redis.call('HSET', key, 'status', status, 'finished_at', ARGV[1])
    redis.call('EXPIRE', key, ARGV[2])
    redis.call('PUBLISH', KEYS[2], '{"event":"' .. status .. '","job_id":"' .. id .. '"}')
    settled = settled + 1
  end
end
return settled
