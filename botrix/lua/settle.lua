-- Write back a batch of finished attempts, each only if the worker still holds its lease.
--
-- The delivery number is a fencing token: it grows on every claim, so an ack from a worker
-- whose lease expired (and whose job was recovered or claimed again) no longer matches.
--
-- KEYS[1] active zset   KEYS[2] scheduled zset   KEYS[3] dead zset   KEYS[4] pending list
-- KEYS[5] events channel
-- ARGV[1] job record key prefix   ARGV[2] finished record TTL s   ARGV[3] dead set cap
-- ARGV[4] queue name
-- then five entries a job: id, delivery, outcome, data, delay ms
--   outcome completed: data is the result (JSON)
--   outcome retry:     data is the error (JSON), run again after the delay
--   outcome dead:      data is the error (JSON)
--   outcome requeue:   back to the head of the queue, the attempt not counted (shutdown)
-- Returns the ids whose ack was refused.
--- @include "_event.lua"

local prefix = ARGV[1]
local ttl = tonumber(ARGV[2])
local queue = ARGV[4]
local now = now_ms()
local refused = {}

for i = 5, #ARGV, 5 do
  local id, delivery, outcome, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local record = prefix .. id
  local state = redis.call('HMGET', record, 'status', 'delivery', 'attempts')
  if state[1] ~= 'running' or state[2] ~= delivery then
    refused[#refused + 1] = id
  else
    redis.call('ZREM', KEYS[1], id)
    local attempt = tonumber(state[3])
    if outcome == 'completed' then
      redis.call('HSET', record, 'status', 'completed', 'result', data, 'finished_at', now)
      redis.call('HDEL', record, 'error', 'run_at')
      if ttl > 0 then
        redis.call('EXPIRE', record, ttl)
      end
      publish(KEYS[5], 'completed', id, queue, now, {attempt = attempt})
    elseif outcome == 'retry' then
      local run_at = now + tonumber(ARGV[i + 4])
      redis.call('HSET', record, 'status', 'retrying', 'error', data, 'run_at', run_at)
      redis.call('ZADD', KEYS[2], run_at, id)
      publish(KEYS[5], 'retrying', id, queue, now, {attempt = attempt, run_at = run_at})
    elseif outcome == 'dead' then
      redis.call('HSET', record, 'status', 'dead', 'error', data, 'finished_at', now)
      redis.call('ZADD', KEYS[3], now, id)
      cap_dead(KEYS[3], prefix, tonumber(ARGV[3]))
      publish(KEYS[5], 'dead', id, queue, now, {attempt = attempt})
    else
      redis.call('HINCRBY', record, 'attempts', -1)
      redis.call('HSET', record, 'status', 'queued')
      redis.call('LPUSH', KEYS[4], id)
      publish(KEYS[5], 'requeued', id, queue, now, {attempt = attempt})
    end
  end
end
return refused
