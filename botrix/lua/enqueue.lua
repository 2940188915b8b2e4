-- Enqueue one job from a botrix client: write its record, then queue or schedule its id.
--
-- KEYS[1] pending list     KEYS[2] scheduled zset     KEYS[3] the job's record hash
-- KEYS[4] events channel   KEYS[5] dead zset
-- ARGV[1] job id           ARGV[2] envelope (JSON)    ARGV[3] delay in ms (0 = now)
-- ARGV[4] queue name
-- Returns 1 when enqueued, 0 when a live job with this id already exists (idempotent enqueue).
--- @include "_event.lua"

local record = KEYS[3]
expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[5]] = 'zset'})
local status = redis.call('HGET', record, 'status')
if status and status ~= 'completed' and status ~= 'dead' then
  return 0
end
if status then
  -- A finished job's id is being reused: the old record goes, and so does its dead-set entry,
  -- or purging or capping the dead set later would delete the new job's record.
  redis.call('DEL', record)
  redis.call('ZREM', KEYS[5], ARGV[1])
end
local now = now_ms()
local delay = tonumber(ARGV[3])
redis.call('HSET', record, 'envelope', ARGV[2], 'enqueued_at', now, 'attempts', 0, 'delivery', 0)
if delay > 0 then
  local run_at = now + delay
  redis.call('HSET', record, 'status', 'scheduled', 'run_at', run_at)
  redis.call('ZADD', KEYS[2], run_at, ARGV[1])
  publish(KEYS[4], 'scheduled', ARGV[1], ARGV[4], now, {run_at = run_at})
else
  redis.call('HSET', record, 'status', 'queued')
  redis.call('RPUSH', KEYS[1], ARGV[1])
  publish(KEYS[4], 'queued', ARGV[1], ARGV[4], now)
end
return 1
