-- Cancel a job (botrix cancel, Client.cancel): it will not run, or not run on (_cancel.lua).
--
-- KEYS[1] pending list   KEYS[2] scheduled zset   KEYS[3] active zset   KEYS[4] events channel
-- ARGV[1] job id   ARGV[2] job record key prefix   ARGV[3] queue name   ARGV[4] record TTL s
-- Returns the status the job had ('' if there is no record): it was cancelled if that status was
-- queued, scheduled, retrying or running. A finished job is left as it is.
--- @include "_event.lua"
--- @include "_cancel.lua"

expect_types({[KEYS[1]] = 'list', [KEYS[2]] = 'zset', [KEYS[3]] = 'zset'})
local id, prefix = ARGV[1], ARGV[2]
local record = prefix .. id
local state = record_fields(record, 'status')
if not state then
  fail_wrong_type(string.format('%s is not a job record', record))
end
local status = state[1]
if not status then
  return ''
end
local k = {pending = KEYS[1], scheduled = KEYS[2], active = KEYS[3], events = KEYS[4]}
cancel_job(k, prefix, ARGV[3], id, status, tonumber(ARGV[4]), now_ms())
return status
