-- Send dead jobs back to their queue with a fresh set of attempts.
--
-- KEYS[1] dead zset   KEYS[2] pending list   KEYS[3] events channel
-- ARGV[1] job record key prefix   ARGV[2] queue name   ARGV[3..] ids (the store sends at most
-- 1,000 a call, so that no call holds Redis for long)
-- Each id leaves the dead set; only records still dead are re-driven. Returns the ids sent back.
--- @include "_event.lua"

expect_types({[KEYS[1]] = 'zset', [KEYS[2]] = 'list'})
local now = now_ms()
local moved = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local record = ARGV[1] .. id
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.pcall('HGET', record, 'status') == 'dead' then
    redis.call('HSET', record, 'status', 'queued', 'attempts', 0, 'run_at', now)
    redis.call('HDEL', record, 'finished_at', 'worker', 'started_at')
    redis.call('PERSIST', record)
    redis.call('RPUSH', KEYS[2], id)
    publish(KEYS[3], 'queued', id, ARGV[2], now, {redriven = true})
    moved[#moved + 1] = id
  end
end
return moved
