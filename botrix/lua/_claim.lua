-- claim_batch: claim up to `want` jobs from the head of the pending list, each under a lease.
-- Pulled into scripts by `--- @include "_claim.lua"` (needs _event.lua first).
--
-- A pending entry is either a job id (botrix clients) or a whole JSON envelope pushed by a
-- foreign producer with one RPUSH; for the latter (and for any unknown entry) the record is
-- created here, keeping the envelope verbatim for the worker to validate. An envelope larger
-- than `max_bytes` is dead-lettered here so it never travels to a worker.
--
-- The delivery number, the lease's fencing token, is drawn from the queue's sequence (`k.seq`,
-- which also numbers generated ids), not counted on the record: a record starts over when a
-- finished job's id is enqueued again, and a token that repeated would let a stale worker's
-- ack pass for the new attempt's. It also stays above the record's last one: an older botrix
-- counted tokens on the record, and a fleet in the middle of an upgrade runs both.
-- Returns two flat arrays: the claimed jobs, five entries a job (id, envelope, attempt,
-- delivery, ready_at), and the entries dead-lettered here, three a job (id, error type,
-- reason), which the worker counts and logs like any other dead letter.
local CLAIM_FIELDS = {'status', 'envelope', 'enqueued_at', 'attempts', 'delivery', 'run_at'}
local function claim_batch(k, prefix, queue, now, want, lease_ms, worker, max_bytes, dead_cap)
  local deadline = now + lease_ms
  local out = {}
  local rejected = {}
  local claimed = 0

  -- A caller may choose an id of this very shape (a Redis stream entry id): one taken is
  -- drawn again, or the job holding it would be overwritten. HGET, not EXISTS, which the
  -- documented ACL does not grant; every record has a status, and a key of another type is
  -- taken too.
  local function new_id()
    while true do
      local id = string.format('%d-%d', now, redis.call('INCR', k.seq))
      if redis.pcall('HGET', prefix .. id, 'status') == false then
        return id
      end
    end
  end

  -- A token as stored, or 0 for anything else written over it, which would otherwise end up
  -- in the sequence, whose next INCR would fail after a pop. 14 digits: Lua prints a larger
  -- number with an exponent.
  local function whole(value)
    if type(value) == 'string' and #value <= 14 and string.match(value, '^%d+$') then
      return tonumber(value)
    end
    return 0
  end

  -- The worker's JSON parser accepts nesting up to 1024 levels; cjson's default stops at 1000,
  -- which would lose the id of a deep but valid envelope.
  cjson.decode_max_depth(1024)

  -- Dead-letters a popped entry that cannot become a job, under a new id, keeping it verbatim.
  local function dead_letter(raw, kind, reason)
    local id = new_id()
    redis.call('HSET', prefix .. id, 'envelope', raw, 'status', 'dead', 'enqueued_at', now,
      'finished_at', now, 'attempts', 0, 'delivery', 0,
      'error', cjson.encode({type = kind, message = reason, traceback = ''}))
    redis.call('ZADD', k.dead, now, id)
    cap_dead(k.dead, prefix, dead_cap)
    publish(k.events, 'dead', id, queue, now, {reason = reason})
    rejected[#rejected + 1] = id
    rejected[#rejected + 1] = kind
    rejected[#rejected + 1] = reason
  end

  -- A record key something else overwrote: the job it held is gone, and its id with it.
  local function overwritten(raw, record)
    dead_letter(raw, 'RecordError',
      string.format('job record %s is not a hash: only botrix may write its keys', record))
  end

  -- Turns a foreign envelope into a record; returns its id, or nil when it is not to be run.
  local function adopt(raw)
    local id
    if #raw > max_bytes then
      dead_letter(raw, 'EnvelopeError',
        string.format('envelope is %d bytes, over the %d byte limit', #raw, max_bytes))
      return nil
    end
    local ok, envelope = pcall(cjson.decode, raw)
    local given = ok and type(envelope) == 'table' and envelope['id']
    -- Ids become key names and log fields: only a safe ASCII set is taken as given (anything
    -- else gets a generated id, and the worker dead-letters the envelope for its bad id).
    if type(given) == 'string' and #given <= 200 and string.find(given, '^[%w_.:@/+=#-]+$') then
      id = given
      local state = record_fields(prefix .. id, 'status')
      if not state then
        overwritten(raw, prefix .. id)
        return nil
      end
      local status = state[1]
      -- "once": a duplicate while any record has the id, a finished job's too (protocol.md).
      local once = envelope['once'] == true
      if status and (once or (status ~= 'completed' and status ~= 'dead' and status ~= 'cancelled')) then
        publish(k.events, 'duplicate', id, queue, now)
        return nil
      end
      redis.call('DEL', prefix .. id)
      redis.call('ZREM', k.dead, id)
    else
      id = new_id()
    end
    local enqueued = now
    local given_at = ok and type(envelope) == 'table' and envelope['enqueued_at']
    if type(given_at) == 'number' and given_at > 0 and given_at < 1e14 then  -- finite ms, not NaN
      enqueued = math.floor(given_at)
    end
    redis.call('HSET', prefix .. id, 'envelope', raw, 'status', 'queued', 'enqueued_at', enqueued,
      'attempts', 0, 'delivery', 0)
    return id
  end

  -- LPOP with a count takes what should fill the slots in one call. Entries that are dropped
  -- (duplicates) or dead-lettered do not fill a slot and make it pop again; the pops are still
  -- bounded so a flood of them cannot turn one call into a long-running script.
  local pops = 0
  local items = {}
  local next_item = 1
  while claimed < want and pops < want + 100 do
    if next_item > #items then
      items = redis.call('LPOP', k.pending, math.min(want - claimed, want + 100 - pops))
      next_item = 1
      if not items then
        break
      end
    end
    local item = items[next_item]
    next_item = next_item + 1
    pops = pops + 1
    local id = item
    local fields = false
    if string.byte(item, 1) ~= 123 and #item <= 200 then
      fields = record_fields(prefix .. item, unpack(CLAIM_FIELDS))
      if not fields then
        overwritten(item, prefix .. item)
        id = nil
      end
    end
    -- An entry that is neither an envelope nor a known id is garbage from some producer: adopt
    -- it like an envelope so that it is dead-lettered with a reason rather than dropped.
    if id and not (fields and fields[1]) then
      id = adopt(item)
      fields = id and record_fields(prefix .. id, unpack(CLAIM_FIELDS))
    end
    local record = prefix .. (id or '')
    local envelope = fields and fields[2] or ''
    if fields and fields[1] == 'queued' and #envelope > max_bytes then
      -- A stored envelope over the limit (re-driven, or enqueued under a larger limit).
      local reason = string.format('envelope is %d bytes, over the %d byte limit', #envelope, max_bytes)
      redis.call('HSET', record, 'status', 'dead', 'finished_at', now,
        'error', cjson.encode({type = 'EnvelopeError', message = reason, traceback = ''}))
      redis.call('ZADD', k.dead, now, id)
      cap_dead(k.dead, prefix, dead_cap)
      publish(k.events, 'dead', id, queue, now, {reason = reason})
      rejected[#rejected + 1] = id
      rejected[#rejected + 1] = 'EnvelopeError'
      rejected[#rejected + 1] = reason
    elseif fields and fields[1] == 'queued' then
      local attempt = (tonumber(fields[4]) or 0) + 1
      local delivery = redis.call('INCR', k.seq)
      local last = whole(fields[5])
      if delivery <= last then
        delivery = last + 1
        redis.call('SET', k.seq, delivery)
      end
      redis.call('HSET', record, 'status', 'running', 'worker', worker, 'started_at', now,
        'attempts', attempt, 'delivery', delivery)
      -- Each job's lease right with its status, not batched like the settle's ZREM: if the
      -- script failed halfway, a job 'running' without a lease would never be recovered.
      redis.call('ZADD', k.active, deadline, id)
      -- Ids, queue and worker names are restricted to plain ASCII, so no JSON escaping is
      -- needed; formatting the event by hand is much cheaper than building a cjson table.
      redis.call('PUBLISH', k.events, string.format(
        '{"event":"started","job_id":"%s","queue":"%s","ts":%d,"attempt":%d,"worker":"%s"}',
        id, queue, now, attempt, worker))
      out[#out + 1] = id
      out[#out + 1] = envelope
      out[#out + 1] = attempt
      out[#out + 1] = delivery
      -- Queue wait counts from when the job could last run: its enqueue, or the due time of a
      -- delay or retry, or its return to the list (requeue, recovery, re-drive set `run_at`).
      out[#out + 1] = math.max(tonumber(fields[3]) or now, tonumber(fields[6]) or 0)
      claimed = claimed + 1
    end
  end
  return out, rejected
end
