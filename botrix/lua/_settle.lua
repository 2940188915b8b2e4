-- settle_batch: write back finished attempts, each only if the worker still holds its lease.
-- Pulled into scripts by `--- @include "_settle.lua"` (needs _event.lua first).
--
-- The delivery number is a fencing token: every claim draws a new one from the queue's
-- sequence, so an ack from a worker whose lease expired (and whose job was recovered or
-- claimed again) no longer matches. The worker must match too: a Redis that restarted from an
-- older snapshot, or a replica promoted while behind, hands out tokens it already gave once.
-- The record remembers which delivery was settled, and by whom, so a retried call (its reply
-- lost) is harmless, even once another worker has claimed the job again.
-- `first` is the ARGV index of the first of five entries a job: id, delivery, outcome, data,
-- delay ms. Outcomes:
--   completed: data is the result (JSON)
--   retry:     data is the error (JSON); run again after the delay
--   dead:      data is the error (JSON)
--   requeue:   back to the head of the queue, the attempt not counted (shutdown)
-- Returns each ack refused as two entries, id and delivery: one batch may hold two attempts of a
-- job (an old one whose lease was lost, and the new one), of which only the old is refused.
local function settle_batch(k, prefix, ttl, dead_cap, queue, now, first, worker)
  local refused = {}
  -- Their leases go in one ZREM at the end, before the claim half of exchange.lua runs (a job
  -- requeued here may be claimed again there). Should the script fail halfway, a settled job
  -- left in the active set is harmless: recovery drops entries whose record is not running.
  local settled = {}
  for i = first, #ARGV, 5 do
    local id, delivery, outcome, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local record = prefix .. id
    local state = record_fields(record, 'status', 'delivery', 'attempts', 'settled', 'worker') or {}
    local mark = delivery .. ':' .. worker
    if state[4] == mark then
      -- Already applied: a retry of a call whose reply was lost. Neither refused nor redone.
    elseif state[1] ~= 'running' or state[2] ~= delivery or state[5] ~= worker then
      refused[#refused + 1] = id
      refused[#refused + 1] = delivery
    else
      settled[#settled + 1] = id
      local attempt = tonumber(state[3]) or 0  -- a garbled count must not fail the batch
      if outcome == 'completed' then
        -- The error of an earlier failed attempt stays: "the latest failure" is still useful.
        redis.call('HSET', record, 'status', 'completed', 'result', data, 'finished_at', now, 'settled', mark)
        if ttl > 0 then
          redis.call('EXPIRE', record, ttl)
        end
        redis.call('PUBLISH', k.events, string.format(
          '{"event":"completed","job_id":"%s","queue":"%s","ts":%d,"attempt":%d}', id, queue, now, attempt))
      elseif outcome == 'retry' then
        local run_at = now + tonumber(ARGV[i + 4])
        redis.call('HSET', record, 'status', 'retrying', 'error', data, 'run_at', run_at, 'settled', mark)
        redis.call('ZADD', k.scheduled, run_at, id)
        publish(k.events, 'retrying', id, queue, now, {attempt = attempt, run_at = run_at})
      elseif outcome == 'dead' then
        redis.call('HSET', record, 'status', 'dead', 'error', data, 'finished_at', now, 'settled', mark)
        redis.call('ZADD', k.dead, now, id)
        cap_dead(k.dead, prefix, dead_cap)
        publish(k.events, 'dead', id, queue, now, {attempt = attempt})
      else
        redis.pcall('HINCRBY', record, 'attempts', -1)  -- a garbled count stays as it is
        redis.call('HSET', record, 'status', 'queued', 'settled', mark, 'run_at', now)
        redis.call('LPUSH', k.pending, id)
        publish(k.events, 'requeued', id, queue, now, {attempt = attempt})
      end
    end
  end
  call_batched('ZREM', k.active, settled)
  return refused
end
