-- enqueue_job: write a job's record, then queue or schedule its id.
-- Pulled into scripts by `--- @include "_enqueue.lua"` (needs _event.lua first).
--
-- k: {pending, scheduled, record, events, dead} keys; delay in ms (0 = now); once: true to
-- do nothing while any record has this id, a finished job's too (kept for its TTL, the dead
-- until purged), instead of only while a job with it is live.
-- Returns 1 when enqueued, 0 when a job with this id already exists (idempotent enqueue).
local function enqueue_job(k, id, envelope, delay, queue, once)
  local status = redis.call('HGET', k.record, 'status')
  if status and (once or (status ~= 'completed' and status ~= 'dead' and status ~= 'cancelled')) then
    return 0
  end
  if status then
    -- A finished job's id is being reused: the old record goes, and so does its dead-set entry,
    -- or purging or capping the dead set later would delete the new job's record.
    redis.call('DEL', k.record)
    redis.call('ZREM', k.dead, id)
  end
  local now = now_ms()
  redis.call('HSET', k.record, 'envelope', envelope, 'enqueued_at', now, 'attempts', 0, 'delivery', 0)
  if delay > 0 then
    local run_at = now + delay
    redis.call('HSET', k.record, 'status', 'scheduled', 'run_at', run_at)
    redis.call('ZADD', k.scheduled, run_at, id)
    publish(k.events, 'scheduled', id, queue, now, {run_at = run_at})
  else
    redis.call('HSET', k.record, 'status', 'queued')
    redis.call('RPUSH', k.pending, id)
    publish(k.events, 'queued', id, queue, now)
  end
  return 1
end
