-- Take back jobs whose lease expired: their worker died, hung, or lost Redis for too long.
--
-- The claim already counted the attempt, so a job whose worker keeps dying (a poison pill)
-- runs out of attempts and is dead-lettered instead of crash-looping the fleet.
--
-- KEYS[1] active zset   KEYS[2] pending list   KEYS[3] dead zset   KEYS[4] events channel
-- ARGV[1] grace ms past the deadline   ARGV[2] job record key prefix
-- ARGV[3] default max retries   ARGV[4] batch size   ARGV[5] dead set cap   ARGV[6] queue name
-- ARGV[7] JSON object: max retries by job type, for handlers that set their own
-- Returns a flat array, three entries a job: id, 'queued' or 'dead', and its type ('' if unknown).
--- @include "_event.lua"

expect_types({[KEYS[1]] = 'zset', [KEYS[2]] = 'list', [KEYS[3]] = 'zset'})
local prefix = ARGV[2]
local queue = ARGV[6]
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[4]))
local out = {}

for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local record = prefix .. id
  local state = record_fields(record, 'status', 'attempts', 'envelope', 'worker') or {}
  if state[1] == 'running' then
    local attempts = tonumber(state[2]) or 1
    local max_retries = tonumber(ARGV[3])
    -- The same precedence as a normal attempt: the envelope, then the handler, then the worker.
    local by_type = cjson.decode(ARGV[7])
    local ok, envelope = pcall(cjson.decode, state[3] or '')
    local job_type = ''
    if ok and type(envelope) == 'table' then
      if type(envelope['type']) == 'string' then
        job_type = envelope['type']
      end
      if type(envelope['max_retries']) == 'number' then
        max_retries = envelope['max_retries']
      elseif type(by_type[job_type]) == 'number' then
        max_retries = by_type[job_type]
      end
    end
    local worker = state[4] or '?'
    if attempts > max_retries then
      local reason = string.format(
        'lease expired on attempt %d of %d: worker %s stopped renewing it (crashed, killed or '
          .. 'hung, or never got the reply of the claim)',
        attempts, max_retries + 1, worker)
      redis.call('HSET', record, 'status', 'dead', 'finished_at', now,
        'error', cjson.encode({type = 'LeaseExpired', message = reason, traceback = ''}))
      redis.call('ZADD', KEYS[3], now, id)
      cap_dead(KEYS[3], prefix, tonumber(ARGV[5]))
      publish(KEYS[4], 'dead', id, queue, now, {attempt = attempts, reason = reason})
      out[#out + 1] = id
      out[#out + 1] = 'dead'
      out[#out + 1] = job_type
    else
      redis.call('HSET', record, 'status', 'queued', 'run_at', now)
      redis.call('LPUSH', KEYS[2], id)
      publish(KEYS[4], 'recovered', id, queue, now, {attempt = attempts, worker = worker})
      out[#out + 1] = id
      out[#out + 1] = 'queued'
      out[#out + 1] = job_type
    end
  end
end
return out
