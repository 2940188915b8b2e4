-- Cancel a job (botrix cancel, Client.cancel): it will not run, or not run on.
--
-- A queued job leaves the pending list, a delayed or retrying one the scheduled set; a running
-- one loses its lease, so its worker's next renewal (within a few seconds) reports it
-- cancelled and the worker cancels the attempt and drops its result (renew.lua). The record is
-- kept, `cancelled`, for the result TTL, like a completed job's. A finished job is left as it is.
--
-- KEYS[1] pending list   KEYS[2] scheduled zset   KEYS[3] active zset   KEYS[4] events channel
-- ARGV[1] job id   ARGV[2] job record key prefix   ARGV[3] queue name   ARGV[4] record TTL s
-- Returns the status the job had ('' if there is no record): it was cancelled if that status was
-- queued, scheduled, retrying or running.
--- @include "_event.lua"

expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[3]] = 'zset'})
local id, queue, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
local record = ARGV[2] .. id
local state = record_fields(record, 'status')
if not state then
  fail_wrong_type(string.format('%s is not a job record', record))
end
local status = state[1]
if not status then
  return ''
end
if status == 'queued' then
  -- O(length of the list) at worst, from the head; an id is on the list once (the claim pops it
-- and changes its status in one step).
  redis.call('LREM', KEYS[1], 1, id)
elseif status == 'scheduled' or status == 'retrying' then
  redis.call('ZREM', KEYS[2], id)
elseif status == 'running' then
  redis.call('ZREM', KEYS[3], id)
else
  return status
end
local now = now_ms()
redis.call('HSET', record, 'status', 'cancelled', 'finished_at', now)
if ttl > 0 then
  redis.call('EXPIRE', record, ttl)
end
publish(KEYS[4], 'cancelled', id, queue, now, {was = status})
return status
