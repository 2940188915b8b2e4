-- claim_batch: claim up to `want` jobs from the head of the pending list, each under a lease.
-- Pulled into scripts by `--- @include "_claim.lua"` (needs _event.lua first).
--
-- A pending entry is either a job id (botrix clients) or a whole JSON envelope pushed by a
-- foreign producer with one RPUSH; for the latter (and for any unknown entry) the record is
-- created here, keeping the envelope verbatim for the worker to validate. An envelope larger
-- than `max_bytes` is dead-lettered here so it never travels to a worker.
-- Returns a flat array, five entries a job: id, envelope, attempt, delivery, enqueued_at.
local function claim_batch(k, prefix, queue, now, want, lease_ms, worker, max_bytes, dead_cap)
  local deadline = now + lease_ms
  local out = {}
  local claimed = 0

  local function new_id()
    return string.format('%d-%d', now, redis.call('INCR', k.seq))
  end

  -- Turns a foreign envelope into a record; returns its id, or nil when it is not to be run.
  local function adopt(raw)
    local id
    if #raw > max_bytes then
      id = new_id()
      local reason = string.format('envelope is %d bytes, over the %d byte limit', #raw, max_bytes)
      redis.call('HSET', prefix .. id, 'envelope', raw, 'status', 'dead', 'enqueued_at', now,
        'finished_at', now, 'attempts', 0, 'delivery', 0,
        'error', cjson.encode({type = 'EnvelopeError', message = reason, traceback = ''}))
      redis.call('ZADD', k.dead, now, id)
      cap_dead(k.dead, prefix, dead_cap)
      publish(k.events, 'dead', id, queue, now, {reason = reason})
      return nil
    end
    local ok, envelope = pcall(cjson.decode, raw)
    local given = ok and type(envelope) == 'table' and envelope['id']
    if type(given) == 'string' and #given > 0 and #given <= 200 and string.byte(given, 1) ~= 123 then
      id = given
      local status = redis.call('HGET', prefix .. id, 'status')
      if status and status ~= 'completed' and status ~= 'dead' then
        publish(k.events, 'duplicate', id, queue, now)
        return nil
      end
      redis.call('DEL', prefix .. id)
    else
      id = new_id()
    end
    local enqueued = now
    if ok and type(envelope) == 'table' and type(envelope['enqueued_at']) == 'number' then
      enqueued = envelope['enqueued_at']
    end
    redis.call('HSET', prefix .. id, 'envelope', raw, 'status', 'queued', 'enqueued_at', enqueued,
      'attempts', 0, 'delivery', 0)
    return id
  end

  while claimed < want do
    local item = redis.call('LPOP', k.pending)
    if not item then
      break
    end
    local id = item
    -- An entry that is neither an envelope nor a known id is garbage from some producer: adopt
    -- it like an envelope so that it is dead-lettered with a reason rather than dropped.
    if string.byte(item, 1) == 123 or #item > 200 or redis.call('EXISTS', prefix .. item) == 0 then
      id = adopt(item)
    end
    local record = prefix .. (id or '')
    if id and redis.call('HGET', record, 'status') == 'queued' then
      local attempt = redis.call('HINCRBY', record, 'attempts', 1)
      local delivery = redis.call('HINCRBY', record, 'delivery', 1)
      redis.call('HSET', record, 'status', 'running', 'worker', worker, 'started_at', now)
      redis.call('ZADD', k.active, deadline, id)
      local fields = redis.call('HMGET', record, 'envelope', 'enqueued_at')
      publish(k.events, 'started', id, queue, now, {attempt = attempt, worker = worker})
      out[#out + 1] = id
      out[#out + 1] = fields[1]
      out[#out + 1] = attempt
      out[#out + 1] = delivery
      out[#out + 1] = tonumber(fields[2]) or now
      claimed = claimed + 1
    end
  end
  return out
end
