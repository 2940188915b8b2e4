-- Cancel jobs (botrix cancel, Client.cancel, Client.cancel_all): they will not run, or not run on.
--
-- A queued job leaves the pending list, a delayed or retrying one the scheduled set; a running
-- one loses its lease, so its worker's next renewal (within a few seconds) reports it
-- cancelled and the worker cancels the attempt and drops its result (renew.lua). The record is
-- kept, `cancelled`, for the result TTL, like a completed job's. A finished job is left as it is.
--
-- KEYS[1] pending list   KEYS[2] scheduled zset   KEYS[3] active zset   KEYS[4] events channel
-- ARGV[1] job record key prefix   ARGV[2] queue name   ARGV[3] record TTL s   ARGV[4..] job ids
-- (the store sends at most 1,000 a call, so that no call holds Redis for long)
-- Returns, for each id, the status the job had ('' if there is no record): it was cancelled if
-- that status was queued, scheduled, retrying or running.
--- @include "_event.lua"

expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[3]] = 'zset'})
local prefix, queue, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])

-- Every record is read before the first write: one that something else overwrote stops the
-- call with nothing changed, naming its key.
local had = {}
for i = 4, #ARGV do
  local record = prefix .. ARGV[i]
  local state = record_fields(record, 'status')
  if not state then
    fail_wrong_type(string.format('%s is not a job record', record))
  end
  had[#had + 1] = state[1] or ''
end

-- Takes the job off the place its status names; false when it is not to be cancelled.
local function take_off(id, status)
  if status == 'queued' then
    -- O(length of the list) at worst, from the head; an id is on the list once (the claim pops
    -- it and changes its status in one step).
    redis.call('LREM', KEYS[1], 1, id)
  elseif status == 'scheduled' or status == 'retrying' then
    redis.call('ZREM', KEYS[2], id)
  elseif status == 'running' then
    redis.call('ZREM', KEYS[3], id)
  else
    return false
  end
  return true
end

local now = now_ms()
for i, status in ipairs(had) do
  local id = ARGV[i + 3]
  if take_off(id, status) then
    redis.call('HSET', prefix .. id, 'status', 'cancelled', 'finished_at', now)
    if ttl > 0 then
      redis.call('EXPIRE', prefix .. id, ttl)
    end
    publish(KEYS[4], 'cancelled', id, queue, now, {was = status})
  end
end
return had
