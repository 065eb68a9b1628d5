"""The Lua scripts of the Redis limiter: ACQUIRE (check all, then count all), RELEASE, and SET_SPEND
(an admin set a scope's spend).

Key layout (all under the limiter's prefix P; every key a script touches is passed in KEYS):
  P:rate:<scope>                 hash {w: window number, req, tok}; a stale w reads as zero
  P:par:<scope>                  sorted set lease id -> expiry (epoch s); expired members ignored
  P:bud:<scope>:<reset|life>     hash {spend, reserved, l:<lease id> -> reserved amount,
                                 chg: the change-feed id of the last spend set applied}
  P:budx:<scope>:<reset|life>    sorted set lease id -> expiry, to return reservations of dead leases
Time is the Redis server's (TIME), so every instance agrees on windows and expiries.
Floats travel as strings and are added with HINCRBYFLOAT (no precision lost in Lua's tostring).
"""

from __future__ import annotations

ACQUIRE = r"""
-- KEYS: for each limit i: rate key, parallel key; then for each budget j: budget hash, budget zset
-- ARGV: lease_id, tokens, max_cost, lease_ttl, window_s, n_limits, n_budgets,
--       per limit: rpm, tpm, parallel ('' = none), per budget: max_budget, seed_spend, reset_at ('' = lifetime)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, tokens, cost_s = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local cost, ttl, wlen = tonumber(cost_s), tonumber(ARGV[4]), tonumber(ARGV[5])
local nl, nb = tonumber(ARGV[6]), tonumber(ARGV[7])
local window = math.floor(now / wlen)
local reset_ms = math.floor(((window + 1) * wlen - now) * 1000)
local EPS = 1e-9
local boff = 7 + 3 * nl

local function fits(used, amount, limit)
  return used < limit and used + amount <= limit
end

local function expire_reservations(bk, xk)
  local dead = redis.call('ZRANGEBYSCORE', xk, '-inf', now)
  if #dead == 0 then return end
  for _, lid in ipairs(dead) do
    local amt = redis.call('HGET', bk, 'l:' .. lid)
    if amt then
      redis.call('HINCRBYFLOAT', bk, 'reserved', '-' .. amt)
      redis.call('HDEL', bk, 'l:' .. lid)
    end
  end
  redis.call('ZREMRANGEBYSCORE', xk, '-inf', now)
  if redis.call('ZCARD', xk) == 0 and redis.call('EXISTS', bk) == 1 then
    redis.call('HSET', bk, 'reserved', '0')
  end
end

-- check phase: nothing below writes a counter (only expired entries are dropped)
local counts = {}
for i = 1, nl do
  local a = 7 + 3 * (i - 1)
  local rpm, tpm, par = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local rk, pk = KEYS[2 * i - 1], KEYS[2 * i]
  local req, tok = 0, 0
  if rpm or tpm then
    local cur = redis.call('HMGET', rk, 'w', 'req', 'tok')
    if tonumber(cur[1]) == window then
      req, tok = tonumber(cur[2]) or 0, tonumber(cur[3]) or 0
    end
    if rpm and not fits(req, 1, rpm) then return {0, 'rpm', i, tostring(req), reset_ms} end
    if tpm and not fits(tok, tokens, tpm) then return {0, 'tpm', i, tostring(tok), reset_ms} end
  end
  if par then
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
    local n = redis.call('ZCARD', pk)
    if not fits(n, 1, par) then return {0, 'parallel', i, tostring(n), reset_ms} end
  end
  counts[i] = {req, tok}
end
for j = 1, nb do
  local a = boff + 3 * (j - 1)
  local maxb, seed = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local bk, xk = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
  expire_reservations(bk, xk)
  local cur = redis.call('HMGET', bk, 'spend', 'reserved')
  local spend, reserved = tonumber(cur[1]) or seed, tonumber(cur[2]) or 0
  if spend + reserved >= maxb - EPS then
    return {0, 'budget', j, tostring(spend), tostring(reserved)}
  end
end

-- count phase
local out = {1, reset_ms, window}
for i = 1, nl do
  local a = 7 + 3 * (i - 1)
  local rpm, tpm, par = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local rk, pk = KEYS[2 * i - 1], KEYS[2 * i]
  if rpm or tpm then
    if counts[i][1] == 0 and counts[i][2] == 0 then
      redis.call('HSET', rk, 'w', window, 'req', 0, 'tok', 0)
    end
    local req = redis.call('HINCRBY', rk, 'req', 1)
    local tok = redis.call('HINCRBY', rk, 'tok', tokens)
    redis.call('EXPIRE', rk, 2 * wlen)
    out[#out + 1] = req
    out[#out + 1] = tok
  end
  if par then
    redis.call('ZADD', pk, now + ttl, id)
    redis.call('EXPIRE', pk, math.ceil(ttl) + wlen)
  end
end
for j = 1, nb do
  local a = boff + 3 * (j - 1)
  local reset_at = tonumber(ARGV[a + 3])
  local bk, xk = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
  redis.call('HSETNX', bk, 'spend', ARGV[a + 2])
  if cost > 0 then
    redis.call('HINCRBYFLOAT', bk, 'reserved', cost_s)
    redis.call('HSET', bk, 'l:' .. id, cost_s)
    redis.call('ZADD', xk, now + ttl, id)
  end
  local keep = 86400
  if reset_at then keep = math.max(reset_at - now, 0) + 3600 end
  keep = math.ceil(math.max(keep, ttl + 60))
  redis.call('EXPIRE', bk, keep)
  if redis.call('EXISTS', xk) == 1 then redis.call('EXPIRE', xk, keep) end
end
return out
"""

RELEASE = r"""
-- KEYS: as ACQUIRE. ARGV: lease_id, window, token_delta, cost, n_limits, n_budgets, per limit: counted ('1'/'0')
local id, window, delta, cost_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local nl, nb = tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 1, nl do
  local rk, pk = KEYS[2 * i - 1], KEYS[2 * i]
  if ARGV[6 + i] == '1' and delta ~= 0 and tonumber(redis.call('HGET', rk, 'w')) == window then
    if redis.call('HINCRBY', rk, 'tok', delta) < 0 then redis.call('HSET', rk, 'tok', 0) end
  end
  redis.call('ZREM', pk, id)
end
for j = 1, nb do
  local bk, xk = KEYS[2 * nl + 2 * j - 1], KEYS[2 * nl + 2 * j]
  local amt = redis.call('HGET', bk, 'l:' .. id)
  if amt then
    redis.call('HINCRBYFLOAT', bk, 'reserved', '-' .. amt)
    redis.call('HDEL', bk, 'l:' .. id)
  end
  redis.call('ZREM', xk, id)
  if redis.call('HEXISTS', bk, 'spend') == 1 then
    if redis.call('ZCARD', xk) == 0 then redis.call('HSET', bk, 'reserved', '0') end
    if tonumber(cost_s) ~= 0 then redis.call('HINCRBYFLOAT', bk, 'spend', cost_s) end
  end
end
return 1
"""

SET_SPEND = r"""
-- KEYS[1]: a budget hash. ARGV: spend, change id. Once per change, never after a later one; a window
-- nobody has counted in yet is left alone (its first acquire seeds it from the database).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (tonumber(redis.call('HGET', KEYS[1], 'chg')) or 0) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'spend', ARGV[1], 'chg', ARGV[2])
return 1
"""
