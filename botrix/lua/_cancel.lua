-- cancel_job: take a job off the place its status names and record it cancelled.
-- Pulled into scripts by `--- @include "_cancel.lua"` (needs _event.lua first).
--
-- A queued job leaves the pending list, a delayed or retrying one the scheduled set; a running
-- one loses its lease, so its worker's next renewal (within a few seconds) reports it
-- cancelled and the worker cancels the attempt and drops its result (renew.lua). The record is
-- kept, `cancelled`, for `ttl` seconds, like a completed job's. `k` holds the queue's pending,
-- scheduled, active and events keys. Returns false, changing nothing, for a job that finished.
local function cancel_job(k, prefix, queue, id, status, ttl, now)
  if status == 'queued' then
    -- O(position in the list), from the head; an id is on the list once (the claim pops it
    -- and changes its status in one step).
    redis.call('LREM', k.pending, 1, id)
  elseif status == 'scheduled' or status == 'retrying' then
    redis.call('ZREM', k.scheduled, id)
  elseif status == 'running' then
    redis.call('ZREM', k.active, id)
  else
    return false
  end
  redis.call('HSET', prefix .. id, 'status', 'cancelled', 'finished_at', now)
  if ttl > 0 then
    redis.call('EXPIRE', prefix .. id, ttl)
  end
  publish(k.events, 'cancelled', id, queue, now, {was = status})
  return true
end
