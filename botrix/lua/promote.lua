-- Move due delayed and retrying jobs onto the pending list, oldest first.
--
-- KEYS[1] scheduled zset   KEYS[2] pending list   KEYS[3] events channel
-- ARGV[1] batch size   ARGV[2] job record key prefix   ARGV[3] queue name
-- Returns {moved, ms until the next job is due or -1 when none is scheduled}.
--- @include "_event.lua"

expect_types({[KEYS[1]] = 'zset', [KEYS[2]] = 'list'})
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  -- A record something else overwrote (not a hash) holds no job any more: its entry goes.
  if type(redis.pcall('HSET', ARGV[2] .. id, 'status', 'queued')) == 'number' then
    redis.call('RPUSH', KEYS[2], id)
    publish(KEYS[3], 'queued', id, ARGV[3], now)
    moved = moved + 1
  end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next_due == 0 then
  return {moved, -1}
end
return {moved, math.max(0, tonumber(next_due[2]) - now)}
