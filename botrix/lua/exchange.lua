-- The worker's one round trip: settle what finished, then claim into the freed slots.
--
-- Settling first frees the slots the claim then fills, so under load a worker needs one call
-- per batch instead of two. Either half may be empty: no settlements (a pure claim) or
-- ARGV[5] = 0 (a pure settle, e.g. while draining).
--
-- KEYS[1] pending list   KEYS[2] active zset   KEYS[3] scheduled zset   KEYS[4] dead zset
-- KEYS[5] events channel KEYS[6] sequence (generated ids, delivery tokens)
-- KEYS[7] paused flag (botrix pause): while it exists, nothing is claimed
-- KEYS[8] rate limit hash (botrix limit)   KEYS[9] its log of recent claims (_rate.lua)
-- KEYS[10] this worker process's lane's last claim (orphans.lua)
-- KEYS[11] that lane's fence: the lowest call number still allowed to claim (orphans.lua)
-- ARGV[1] job record key prefix   ARGV[2] finished record TTL s   ARGV[3] dead set cap
-- ARGV[4] queue name   ARGV[5] how many to claim   ARGV[6] lease ms   ARGV[7] worker id
-- ARGV[8] max envelope bytes   ARGV[9] this call's number on its lane (rising), or '': never fenced
-- ARGV[10..] five entries per settled job: id, delivery, outcome, data, delay ms
-- Returns {refused acks (two entries each: id, delivery), claimed jobs (five entries a job:
-- id, envelope, attempt, delivery, ready_at: when it could last run), entries dead-lettered by
-- the claim (three a job: id, error type, reason), 1 if the claim was skipped because the queue
-- is paused else 0, ms until the rate limit lets another claim through if it cut this one short
-- else 0}.
--- @include "_event.lua"
--- @include "_settle.lua"
--- @include "_claim.lua"
--- @include "_rate.lua"

local k = {pending = KEYS[1], active = KEYS[2], scheduled = KEYS[3], dead = KEYS[4],
  events = KEYS[5], seq = KEYS[6]}
expect_types({[k.pending] = 'list', [k.active] = 'zset', [k.scheduled] = 'zset', [k.dead] = 'zset'})
local prefix, queue = ARGV[1], ARGV[4]
local dead_cap = tonumber(ARGV[3])
local now = now_ms()
local worker = ARGV[7]
local refused = settle_batch(k, prefix, tonumber(ARGV[2]), dead_cap, queue, now, 10, worker)
local claimed, rejected = {}, {}
local want = tonumber(ARGV[5])
local call = tonumber(ARGV[9])
if want > 0 and call and call < fence_of(KEYS[11]) then
  -- A call the lane has already asked about as lost (its request held up in the network until
  -- after the question): its claim would lease jobs nobody looks for. Its settle half stands,
  -- as written again by a later call it is a no-op.
  want = 0
end
local paused, limited = 0, 0
if want > 0 then
  -- Here, not at the top: a bad sequence or pause flag must not stop results from being
  -- written. Past this point the call fails with them written, and its retry finds them
  -- applied. Both are checked before the pause is honoured, so that a claim that succeeds,
  -- paused or not, proves them sound (the runner takes it as the end of a hold). The rate
  -- limit's keys likewise.
  expect_counter(k.seq)
  local is_paused = expect_flag(KEYS[7])
  local limit = rate_load(KEYS[8], KEYS[9], now)
  if is_paused then
    paused = 1
  else
    local room = rate_room(limit, want)
    if room > 0 then
      claimed, rejected = claim_batch(k, prefix, queue, now, room, tonumber(ARGV[6]), worker,
        tonumber(ARGV[8]), dead_cap)
    end
    if #claimed > 0 then
      -- What this call leased, for the worker to find should the reply never reach it: one
      -- write a call, not a job; it outlives no lease.
      local leased = {}
      for i = 1, #claimed, 5 do
        leased[#leased + 1] = claimed[i] .. ' ' .. claimed[i + 3]
      end
      redis.call('SET', KEYS[10], table.concat(leased, ','), 'PX', ARGV[6])
    end
    limited = rate_spend(KEYS[8], KEYS[9], limit, now, #claimed / 5, want)
  end
end
return {refused, claimed, rejected, paused, limited}
