//! The Lua scripts. Every script touches the keys of one shard only (they all
//! carry the shard's hash tag), so it runs atomically on the one node that
//! holds the shard's slot, also on Redis Cluster.

/// Apply one batch of ops to a shard.
///
/// KEYS[1] expiry index (ZSET deadline → encoded ExpiryKey), KEYS[2] lease
/// (HASH o=owner t=token), KEYS[3] counters (HASH p s b d), then the keys of
/// the ops, consumed in order.
/// ARGV[1] fence token ('' = unfenced), ARGV[2] fence owner, ARGV[3] grace
/// ms, ARGV[4] the shard's key prefix (`<prefix>:{k}:`), then the ops, each
/// a code and its arguments.
///
/// A fenced batch is checked before any write, so a refused batch changes
/// nothing. Returns the new version of each document, in order.
///
/// Key TTLs are `max(deadline, now) + grace` with Redis's own clock, capped at
/// ten years: a record is never dropped by the safety net before its deadline
/// plus the grace, whatever the clock skew between the server and us.
pub const COMMIT: &str = r#"
local x, lease, cnt = KEYS[1], KEYS[2], KEYS[3]
local fence, owner, grace, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if fence ~= '' then
  local l = redis.call('HMGET', lease, 't', 'o')
  if l[1] ~= fence or l[2] ~= owner then
    return redis.error_reply('FENCED lease owner or token mismatch')
  end
end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local function at(deadline)
  local d = tonumber(deadline) or now
  if d < now then d = now end
  if d > now + 315360000000 then d = now + 315360000000 end
  return d + grace
end
local function extend(k, deadline)
  local t = at(deadline)
  local cur = redis.call('PEXPIRETIME', k)
  if cur == -1 or (cur >= 0 and cur < t) then
    redis.call('PEXPIREAT', k, t)
  end
end
-- A document's TTL only grows, and only while it has one (none = it holds
-- hard state; such a document is not touched here).
local function extend_doc(doc, deadline)
  local t = at(deadline)
  local cur = redis.call('PEXPIRETIME', doc)
  if cur >= 0 and cur < t then redis.call('PEXPIREAT', doc, t) end
end
-- A document lives as long as what backs it: for ever with hard state, else
-- as long as its publications and watchers (their TTLs include the grace),
-- at least the grace.
local function fit_doc(doc, p, w, h)
  if redis.call('EXISTS', doc) == 0 then return end
  if redis.call('EXISTS', h) == 1 then
    redis.call('PERSIST', doc)
    return
  end
  local t = at(now)
  for _, k in ipairs({p, w}) do
    local e = redis.call('PEXPIRETIME', k)
    if e > t then t = e end
  end
  local cur = redis.call('PEXPIRETIME', doc)
  if cur == -1 or (cur >= 0 and cur < t) then redis.call('PEXPIREAT', doc, t) end
end
local ai, ki = 5, 4
local function arg() local v = ARGV[ai]; ai = ai + 1; return v end
local function key() local v = KEYS[ki]; ki = ki + 1; return v end
local versions = {}
while ai <= #ARGV do
  local op = arg()
  if op == 'P' then
    local h, doc = key(), key()
    local etag, m, d, v = arg(), arg(), arg(), arg()
    if redis.call('HSET', h, etag, v) == 1 then redis.call('HINCRBY', cnt, 'p', 1) end
    extend(h, d)
    extend_doc(doc, d)
    redis.call('ZADD', x, d, m)
  elseif op == 'p' then
    local h = key()
    local etag, m = arg(), arg()
    if redis.call('HDEL', h, etag) == 1 then redis.call('HINCRBY', cnt, 'p', -1) end
    redis.call('ZREM', x, m)
  elseif op == 'B' then
    local b = key()
    local m, n, dmin, dmax, v = arg(), tonumber(arg()), arg(), arg(), arg()
    local old = tonumber(redis.call('HGET', b, 'n') or '0') or 0
    if n == 0 then
      redis.call('DEL', b)
      redis.call('ZREM', x, m)
    else
      redis.call('HSET', b, 'n', n, 'v', v)
      redis.call('PEXPIREAT', b, at(dmax))
      redis.call('ZADD', x, dmin, m)
    end
    if n ~= old then redis.call('HINCRBY', cnt, 'b', n - old) end
  elseif op == 'S' then
    local s, w, doc, q = key(), key(), key(), key()
    local id, m, d, v, pending = arg(), arg(), arg(), arg(), arg()
    if redis.call('EXISTS', s) == 0 then redis.call('HINCRBY', cnt, 's', 1) end
    if pending == '1' then redis.call('SADD', q, id) else redis.call('SREM', q, id) end
    redis.call('SET', s, v, 'PXAT', at(d))
    redis.call('SADD', w, id)
    extend(w, d)
    extend_doc(doc, d)
    redis.call('ZADD', x, d, m)
  elseif op == 's' then
    local s, q = key(), key()
    local id, m = arg(), arg()
    redis.call('SREM', q, id)
    local v = redis.call('GET', s)
    if v then
      -- The value starts with `<len>:<event>:<aor>`, naming its watcher set.
      local c = string.find(v, ':', 1, true)
      local n = c and tonumber(string.sub(v, 1, c - 1))
      if n then
        redis.call('SREM', prefix .. 'w:' .. string.sub(v, c + 1, c + n), id)
      end
      redis.call('DEL', s)
      redis.call('HINCRBY', cnt, 's', -1)
    end
    redis.call('ZREM', x, m)
  elseif op == 'D' then
    local d, p, w, h = key(), key(), key(), key()
    local ct, body, first = arg(), arg(), arg()
    local v = redis.call('HINCRBY', d, 'v', 1)
    if v == 1 then
      redis.call('HINCRBY', cnt, 'd', 1)
      -- A new document starts at the version it was given (kept as the
      -- decimal string: Lua would print a large number as 1.7e+15).
      if first ~= '1' then
        redis.call('HSET', d, 'v', first)
        v = tonumber(first)
      end
    end
    redis.call('HSET', d, 'c', ct, 'b', body)
    versions[#versions + 1] = v
    fit_doc(d, p, w, h)
  elseif op == 'X' then
    if redis.call('DEL', key()) == 1 then redis.call('HINCRBY', cnt, 'd', -1) end
  elseif op == 'H' then
    local h, d, p, w = key(), key(), key(), key()
    redis.call('SET', h, arg())
    fit_doc(d, p, w, h)
  elseif op == 'h' then
    local h, d, p, w = key(), key(), key(), key()
    redis.call('DEL', h)
    fit_doc(d, p, w, h)
  elseif op == 'K' then
    redis.call('SET', key(), 1, 'PX', arg())
  elseif op == 'U' then
    redis.call('ZREM', x, arg())
  elseif op == 'Q' then
    local oq, o = key(), key()
    local id = arg()
    redis.call('ZADD', oq, 0, id)
    redis.call('HSET', o, id, arg())
  else
    return redis.error_reply('ERR unknown op ' .. tostring(op))
  end
end
return versions
"#;

/// Where a subscription lives: KEYS[1] its id hash, ARGV[1] shard, ARGV[2]
/// deadline, ARGV[3] grace ms. Also carries the NOTIFY CSeq counter (`c`).
/// Its TTL only grows: a shorter refresh, or a late write of a fenced-out
/// owner (this runs before the batch's fence check), never makes a live
/// subscription unfindable.
pub const LOCATE: &str = r#"
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local d = tonumber(ARGV[2]) or now
if d < now then d = now end
if d > now + 315360000000 then d = now + 315360000000 end
local t = d + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'k', ARGV[1])
local cur = redis.call('PEXPIRETIME', KEYS[1])
if cur == -1 or (cur >= 0 and cur < t) then redis.call('PEXPIREAT', KEYS[1], t) end
return 1
"#;

/// Next NOTIFY CSeq of each subscription: KEYS[i] an id hash, ARGV[1]
/// grace ms (TTL of a counter whose subscription was never stored, e.g. a
/// fetch), ARGV[i + 1] the version KEYS[i]'s NOTIFY carries. Returns one
/// number per key, taken in order (a key twice takes two): the CSeq, or 0
/// when a newer version took one, or the NOTIFYs are over (`e`). Several
/// keys only where they share a slot (not across a Redis Cluster).
pub const NEXT_CSEQ: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local c = 0
  local st = redis.call('HMGET', key, 'v', 'e')
  if not st[2] then
    local v = tonumber(st[1] or '0')
    if tonumber(ARGV[i + 1]) >= v then
      redis.call('HSET', key, 'v', ARGV[i + 1])
      c = redis.call('HINCRBY', key, 'c', 1)
      if redis.call('PTTL', key) == -1 then redis.call('PEXPIRE', key, ARGV[1]) end
    end
  end
  out[i] = c
end
return out
"#;

/// The NOTIFYs of a subscription are over: KEYS[1] the id hash, ARGV[1]
/// grace ms. The mark keeps the hash at least that long.
pub const END_CSEQ: &str = r#"
redis.call('HSET', KEYS[1], 'e', 1)
local t = redis.call('PTTL', KEYS[1])
if t >= 0 and t < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if t == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"#;

/// The first ARGV[1] jobs of a shard's outbox: KEYS[1] the id ZSET (all
/// scores 0, so ids sort as bytes), KEYS[2] the id → job HASH. Returns
/// id, job, id, job, … (an id whose job is gone is skipped).
pub const OUTBOX: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local j = redis.call('HGET', KEYS[2], id)
  if j then
    out[#out + 1] = id
    out[#out + 1] = j
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"#;

/// KEYS[1] lease, KEYS[2] fence counter; ARGV[1] owner, ARGV[2] ttl ms.
/// A new token unless another owner holds a live lease (then nil).
pub const ACQUIRE: &str = r#"
local o = redis.call('HGET', KEYS[1], 'o')
if o and o ~= ARGV[1] then return false end
local t = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'o', ARGV[1], 't', t)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return t
"#;

/// KEYS[1] lease; ARGV[1] owner, ARGV[2] token, ARGV[3] ttl ms. 1 if renewed.
pub const RENEW: &str = r#"
local l = redis.call('HMGET', KEYS[1], 'o', 't')
if l[1] == ARGV[1] and l[2] == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"#;

/// KEYS[1] lease; ARGV[1] owner, ARGV[2] token.
pub const RELEASE: &str = r#"
local l = redis.call('HMGET', KEYS[1], 'o', 't')
if l[1] == ARGV[1] and l[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;
