-- Enqueue the run of a periodic handler (`@handler(..., every=S)` or `cron=`) for the current
-- slot, once.
--
-- Every worker with the handler calls this; the slot comes from the Redis clock and the hash
-- remembers the last slot enqueued, so each slot is enqueued once whatever the workers' clocks,
-- and slots missed while no worker ran are not made up one by one: the latest of them runs,
-- once. For `every=` the slot is the start of the current period, counted from the epoch; for
-- `cron=` it is the last fire time, which the caller worked out from the Redis clock (TIME) just
-- before, and the first look ever only records it (a daily 2 AM job deployed at noon runs at
-- 2 AM, not at once). While the previous run is still queued or running, the new slot waits
-- (runs never pile up behind a slow or stopped consumer); it is enqueued once that run ends.
--
-- KEYS[1] pending list   KEYS[2] scheduled zset   KEYS[3] events channel   KEYS[4] dead zset
-- KEYS[5] schedules hash (job type -> last slot enqueued: '<ms>', or 'cron:<ms>' for cron=)
-- ARGV[1] job type   ARGV[2] period in ms, or 0 for a cron handler   ARGV[3] queue name
-- ARGV[4] job record key prefix
-- ARGV[5] (cron) the last fire time at or before the caller's reading of the clock, ms (0: none)
-- ARGV[6] (cron) the next fire time after it, ms
-- Returns {the id enqueued, or '' if none; ms until the next slot; 1 if the previous run is still
-- live (the caller backs off and looks again), else 0}.
--- @include "_event.lua"
--- @include "_enqueue.lua"

expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[4]] = 'zset'})
local job_type, every, queue, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local raw = redis.pcall('HGET', KEYS[5], job_type)
if type(raw) == 'table' and raw['err'] then
  fail_wrong_type(string.format('%s is not a hash', KEYS[5]))
end
-- The last slot enqueued and its kind: '<ms>' for every=, 'cron:<ms>' for cron=, so that a
-- handler switched from one to the other finds the previous run's id (and a cron handler
-- switched from every= takes its first look as a first look). Anything else is not botrix's.
local last_kind, last = nil, nil
if raw then
  local tag, digits = string.match(raw, '^(%a+):(%d+)$')
  if not tag then
    tag, digits = 'every', string.match(raw, '^%d+$')
  end
  if not digits or #digits > 14 or (tag ~= 'every' and tag ~= 'cron') then
    fail_wrong_type(string.format('%s field %s is not a slot', KEYS[5], job_type))
  end
  last_kind, last = tag, tonumber(digits)
end
local function id_of(of_kind, at)
  return string.format('%s:%s:%d', of_kind, job_type, at)
end
local function previous_live()
  local previous = last and redis.pcall('HGET', prefix .. id_of(last_kind, last), 'status')
  return previous == 'queued' or previous == 'scheduled' or previous == 'running' or previous == 'retrying'
end
local now = now_ms()
local slot, until_next, kind, stored
if every > 0 then
  slot = now - now % every
  until_next = slot + every - now
  kind, stored = 'every', string.format('%d', slot)
else
  slot = tonumber(ARGV[5])
  until_next = tonumber(ARGV[6]) - now
  kind, stored = 'cron', string.format('cron:%d', slot)
  if last_kind ~= 'cron' then
    if previous_live() then  -- switched from every=: its last run must end first, as below
      return {'', until_next, 1}
    end
    redis.call('HSET', KEYS[5], job_type, stored)
    return {'', until_next, 0}
  end
end
if last and last >= slot then
  return {'', until_next, 0}
end
if previous_live() then
  return {'', until_next, 1}
end
local id = id_of(kind, slot)
local envelope = string.format('{"type":%s,"payload":{"slot_ms":%d},"queue":"%s"}',
  cjson.encode(job_type), slot, queue)
local k = {pending = KEYS[1], scheduled = KEYS[2], record = prefix .. id, events = KEYS[3], dead = KEYS[4]}
enqueue_job(k, id, envelope, 0, queue)
redis.call('HSET', KEYS[5], job_type, stored)
return {id, until_next, 0}
