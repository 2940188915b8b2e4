-- Claim up to ARGV[1] jobs from the head of the pending list, each under a lease.
--
-- A pending entry is either a job id (botrix clients) or a whole JSON envelope pushed by a
-- foreign producer with one RPUSH; for the latter (and for any unknown entry) this script
-- creates the record, keeping the envelope verbatim for the worker to validate. An envelope larger than ARGV[5] bytes is
-- dead-lettered here so it never travels to a worker.
--
-- KEYS[1] pending list   KEYS[2] active zset (id -> lease deadline ms)   KEYS[3] id sequence
-- KEYS[4] events channel KEYS[5] dead zset
-- ARGV[1] how many (the worker's free slots)   ARGV[2] lease length ms   ARGV[3] worker id
-- ARGV[4] job record key prefix   ARGV[5] max envelope bytes   ARGV[6] queue name
-- ARGV[7] dead set cap
-- Returns a flat array, five entries a job: id, envelope, attempt, delivery, enqueued_at.
--- @include "_event.lua"

local want = tonumber(ARGV[1])
local prefix = ARGV[4]
local queue = ARGV[6]
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
local out = {}
local claimed = 0

local function new_id()
  return string.format('%d-%d', now, redis.call('INCR', KEYS[3]))
end

-- Turns a foreign envelope into a record; returns its id, or nil when it is not to be run.
local function adopt(raw)
  local id
  if #raw > tonumber(ARGV[5]) then
    id = new_id()
    local reason = string.format('envelope is %d bytes, over the %s byte limit', #raw, ARGV[5])
    redis.call('HSET', prefix .. id, 'envelope', raw, 'status', 'dead', 'enqueued_at', now,
      'finished_at', now, 'attempts', 0, 'delivery', 0,
      'error', cjson.encode({type = 'EnvelopeError', message = reason, traceback = ''}))
    redis.call('ZADD', KEYS[5], now, id)
    cap_dead(KEYS[5], prefix, tonumber(ARGV[7]))
    publish(KEYS[4], 'dead', id, queue, now, {reason = reason})
    return nil
  end
  local ok, envelope = pcall(cjson.decode, raw)
  local given = ok and type(envelope) == 'table' and envelope['id']
  if type(given) == 'string' and #given > 0 and #given <= 200 and string.byte(given, 1) ~= 123 then
    id = given
    local status = redis.call('HGET', prefix .. id, 'status')
    if status and status ~= 'completed' and status ~= 'dead' then
      publish(KEYS[4], 'duplicate', id, queue, now)
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
  local item = redis.call('LPOP', KEYS[1])
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
    redis.call('HSET', record, 'status', 'running', 'worker', ARGV[3], 'started_at', now)
    redis.call('ZADD', KEYS[2], deadline, id)
    local fields = redis.call('HMGET', record, 'envelope', 'enqueued_at')
    publish(KEYS[4], 'started', id, queue, now, {attempt = attempt, worker = ARGV[3]})
    out[#out + 1] = id
    out[#out + 1] = fields[1]
    out[#out + 1] = attempt
    out[#out + 1] = delivery
    out[#out + 1] = tonumber(fields[2]) or now
    claimed = claimed + 1
  end
end
return out
