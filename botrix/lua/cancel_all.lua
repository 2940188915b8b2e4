-- Cancel a page of the jobs in one of a queue's places (botrix cancel --all, Client.cancel_all).
--
-- Reads `count` entries from rank `start` of the pending list, the scheduled set or the active
-- set, and cancels each that is a job in a state of that place (queued; scheduled or retrying;
-- running) and was enqueued by `cutoff`, the caller's start (started, for the active set), as
-- cancel.lua would (_cancel.lua). The rest stay in place: a foreign envelope (it has no record
-- until a claim), a job enqueued or started since. Reading and cancelling in one call leaves
-- nothing to move in between: the caller's next page starts `kept` entries from the head, past
-- what this one left, and what others take off the head between two calls (claims, finishing
-- jobs) comes out of those kept entries only.
--
-- KEYS[1] pending list   KEYS[2] scheduled zset   KEYS[3] active zset   KEYS[4] events channel
-- ARGV[1] place: 'pending', 'scheduled' or 'active'   ARGV[2] job record key prefix
-- ARGV[3] queue name   ARGV[4] record TTL s   ARGV[5] cutoff, epoch ms   ARGV[6] start
-- ARGV[7] count (the store sends 1,000, so that no call holds Redis for long)
-- Returns {cancelled, kept, read}: fewer read than `count` means the end was reached.
--- @include "_event.lua"
--- @include "_cancel.lua"

expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[3]] = 'zset'})
local k = {pending = KEYS[1], scheduled = KEYS[2], active = KEYS[3], events = KEYS[4]}
local place, prefix, queue, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local cutoff, first, last = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[6]) + tonumber(ARGV[7]) - 1

local entries, statuses, since
if place == 'pending' then
  entries, statuses, since = redis.call('LRANGE', k.pending, first, last), {queued = true}, 'enqueued_at'
elseif place == 'scheduled' then
  entries = redis.call('ZRANGE', k.scheduled, first, last)
  statuses, since = {scheduled = true, retrying = true}, 'enqueued_at'
else
  entries, statuses, since = redis.call('ZRANGE', k.active, first, last), {running = true}, 'started_at'
end

-- Every record is read before the first write: one that something else overwrote stops the
-- call with nothing changed, naming its key.
local taken = {}
for i, entry in ipairs(entries) do
  local record = prefix .. entry
  local fields = record_fields(record, 'status', since)
  if not fields then
    fail_wrong_type(string.format('%s is not a job record', record))
  end
  local at = tonumber(fields[2])
  taken[i] = fields[1] and statuses[fields[1]] and at and at <= cutoff and fields[1] or false
end

local now = now_ms()
local cancelled = 0
for i, entry in ipairs(entries) do
  if taken[i] and cancel_job(k, prefix, queue, entry, taken[i], ttl, now) then
    cancelled = cancelled + 1
  end
end
return {cancelled, #entries - cancelled, #entries}
