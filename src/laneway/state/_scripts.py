"""The Lua scripts that make each shared decision atomic on the Redis server.

Times come from the server's own clock (`TIME`), so replicas with skewed clocks still agree.
A lease is a member of a sorted set scored by its expiry in milliseconds; a replica that dies
stops renewing its leases and they fall out after their TTL. A budget is a hash holding the
bucket's `level` and the `stamp` of its last refill.
"""

from __future__ import annotations

_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
_NOW_S = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS[1] leases; ARGV limit, lease id, ttl ms. Returns 1 when leased, 0 when the limit is reached.
ACQUIRE = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] leases; ARGV ttl ms, lease ids... Re-adds a lease lost with a restarted server: the call
# it stands for is still running, and the count must say so.
RENEW = _NOW_MS + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return #ARGV - 1
"""

# KEYS[1] bucket; ARGV per minute, amount. Returns the seconds to wait ("0" when taken), as text
# because Redis truncates Lua numbers to integers.
TAKE = _NOW_S + """
local per_minute = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(held[1]) or per_minute
local stamp = tonumber(held[2]) or now
level = math.min(per_minute, level + math.max(0, now - stamp) * per_minute / 60)
local wait = 0
local need = math.min(amount, per_minute)  -- more than a minute's worth waits for a full bucket, then goes alone
if need <= level then
  level = level - amount
else
  wait = (need - level) * 60 / per_minute
end
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level), 'stamp', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], 60 + math.ceil((per_minute - level) * 60 / per_minute))
return string.format('%.6f', wait)
"""

# KEYS[1] bucket; ARGV per minute, amount (negative when a call used more than it was charged).
# A bucket that expired is full again: nothing to give back to it.
REFUND = """
local level = tonumber(redis.call('HGET', KEYS[1], 'level'))
if level == nil then
  return 0
end
level = math.min(tonumber(ARGV[1]), level + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level))
return 1
"""

# KEYS[1] a client key's spend, KEYS[2] the charge's marker; ARGV usd, the spend's ttl s (0: none), the marker's
# ttl s. A charge is made once, however often it is sent: one whose command timed out may still run when the
# store catches up, and the copy sent again after the outage then finds its marker. Returns 1 when charged.
CHARGE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""
