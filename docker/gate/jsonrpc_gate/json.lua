-- Strict JSON reader for the gate (docs/architecture.md, "The JSON-RPC gate").
--
-- decode(text) -> value | nil, err_kind, message
--   err_kind "parse": not JSON (RFC 8259: no trailing data, no lone surrogates, valid UTF-8,
--   no raw control characters in strings);
--   err_kind "duplicate": an object holds two members whose names fold to the same name (ASCII
--   case, and the two non-ASCII letters Go's encoding/json folds: U+017F to s, U+212A to k),
--   which JSON readers disagree on.
-- Objects decode to tables keyed by the folded member name; M.raw_keys(obj)[folded] is the
-- member's name as written where that differs from the folded name, M.raw_id(obj) the exact
-- text of a member written "id". Arrays decode to tables with an `n` field; null decodes to
-- M.null. M.bounds(v) of an array or object says where it is in the text, and M.spans(v, text)
-- where its parts are (0-based offsets: `close` of the closing bracket; an array's elements
-- from starts[i] to ends[i], an object's member values by folded name), so a caller can splice
-- the text instead of re-encoding it (jsonrpc_gate.chain pins block tags that way); M.element
-- finds one element's. Spans are found when asked for, by scanning the one container again:
-- most requests never need them. M.elements(text) lays out an array another reader wrote (a
-- node's answer) without decoding it.
--
-- The reader walks the bytes through an FFI pointer in one loop with its own stack, so that
-- LuaJIT compiles it (string patterns, closures and recursion would keep it in the
-- interpreter). Reading one byte past the end is safe: LuaJIT keeps a NUL after every string's
-- bytes, and every loop stops at it.

local ffi = require "ffi"
local sub, char, lower, gsub, find = string.sub, string.char, string.lower, string.gsub,
  string.find
local concat = table.concat
local floor = math.floor
local cast, setmetatable, getmetatable, pcall, error, tostring = ffi.cast, setmetatable,
  getmetatable, pcall, error, tostring
local BYTES = ffi.typeof("const uint8_t *")
-- Tables made with room for a JSON-RPC call's members and the reader's own keys, so that
-- filling them never grows them.
local new_table = require "table.new"

local M = {}
M.null = setmetatable({}, { __tostring = function() return "null" end })

-- Metadata of decoded tables, under keys no member name (a string) can equal.
local RAW, ID, ARRAY, FIRST, LAST = {}, {}, {}, {}, {}
local NO_RAW = setmetatable({}, { __newindex = function() error("read-only") end })

function M.raw_keys(obj) return obj[RAW] or NO_RAW end
function M.raw_id(obj) return obj[ID] end
function M.is_array(v) return type(v) == "table" and v[ARRAY] == true end
function M.bounds(v) return v[FIRST], v[LAST] end

local function fold(name)
  -- U+017F (LATIN SMALL LETTER LONG S) = C5 BF, U+212A (KELVIN SIGN) = E2 84 AA
  if find(name, "[\128-\255]") then
    name = gsub(name, "\197\191", "s")
    name = gsub(name, "\226\132\170", "k")
  end
  return lower(name)
end
M.fold = fold

-- The text being read: set by decode for the duration of one call (no yield happens inside).
local text, p, len

local Failure = {}
local function fail(message, kind)
  error(setmetatable({ kind = kind or "parse", message = message }, Failure), 0)
end

local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
    0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- Length of the valid UTF-8 sequence starting at offset i, or nil.
local function utf8_len(i)
  local c = p[i]
  local n, min, cp
  if c >= 0xC2 and c <= 0xDF then n, min, cp = 2, 0x80, c - 0xC0
  elseif c >= 0xE0 and c <= 0xEF then n, min, cp = 3, 0x800, c - 0xE0
  elseif c >= 0xF0 and c <= 0xF4 then n, min, cp = 4, 0x10000, c - 0xF0
  else return nil end
  if i + n > len then return nil end
  for k = 1, n - 1 do
    local d = p[i + k]
    if d < 0x80 or d > 0xBF then return nil end
    cp = cp * 64 + (d - 0x80)
  end
  if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
  return n
end

-- The value of the four hex digits at offset i, or nil.
local function hex4(i)
  if i + 4 > len then return nil end
  local v = 0
  for k = i, i + 3 do
    local c = p[k]
    if c >= 48 and c <= 57 then v = v * 16 + (c - 48)
    elseif c >= 97 and c <= 102 then v = v * 16 + (c - 87)
    elseif c >= 65 and c <= 70 then v = v * 16 + (c - 55)
    else return nil end
  end
  return v
end

local ESCAPES = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f",
  [110] = "\n", [114] = "\r", [116] = "\t" }

-- Reads the string whose opening quote is at offset i; returns the decoded string, the offset
-- after the closing quote, and whether folding may change it (an upper-case letter, an escape
-- or a non-ASCII byte).
local function read_string(i)
  local j = i + 1
  local seg = j
  local parts, np = nil, 0
  local foldable = false
  while true do
    local c = p[j]
    if c == 34 then
      local piece = sub(text, seg + 1, j)
      if parts then
        np = np + 1; parts[np] = piece
        piece = concat(parts, "", 1, np)
      end
      return piece, j + 1, foldable
    elseif c == 92 then
      foldable = true
      parts = parts or {}
      np = np + 1; parts[np] = sub(text, seg + 1, j)
      local e = p[j + 1]
      local simple = j + 1 < len and ESCAPES[e]
      if simple then
        np = np + 1; parts[np] = simple
        j = j + 2
      elseif e == 117 then
        local cp = hex4(j + 2)
        if not cp then fail("bad \\u escape") end
        j = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local lo = p[j] == 92 and p[j + 1] == 117 and hex4(j + 2)
          if not lo or lo < 0xDC00 or lo > 0xDFFF then fail("lone surrogate") end
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
          j = j + 6
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          fail("lone surrogate")
        end
        np = np + 1; parts[np] = utf8_char(cp)
      else
        fail("bad escape")
      end
      seg = j
    elseif c >= 128 then
      local n = utf8_len(j)
      if not n then fail("invalid UTF-8") end
      foldable = true
      j = j + n
    elseif c >= 32 then
      if c >= 65 and c <= 90 then foldable = true end
      j = j + 1
    elseif j >= len then
      fail("unterminated string")
    else
      fail("control character in string")
    end
  end
end

local function skip_ws(i)
  local c = p[i]
  while c == 32 or c == 10 or c == 13 or c == 9 do
    i = i + 1
    c = p[i]
  end
  return i
end

local function skip_digits(i)
  local c = p[i]
  while c >= 48 and c <= 57 do
    i = i + 1
    c = p[i]
  end
  return i
end

local function read_number(i)
  local j = i
  if p[j] == 45 then j = j + 1 end
  local c = p[j]
  if c == 48 then
    j = j + 1
  elseif c >= 49 and c <= 57 then
    j = skip_digits(j + 1)
  else
    fail("unexpected character")
  end
  if p[j] == 46 then
    local k = skip_digits(j + 1)
    if k == j + 1 then fail("unexpected character") end
    j = k
  end
  c = p[j]
  if c == 101 or c == 69 then
    local k = j + 1
    c = p[k]
    if c == 43 or c == 45 then k = k + 1 end
    local e = skip_digits(k)
    if e == k then fail("unexpected character") end
    j = e
  end
  return tonumber(sub(text, i + 1, j)), j
end

local MAX_DEPTH = 128

-- A scalar at offset i: its value and the offset after it (strings, numbers, literals).
local function read_scalar(i)
  local c = p[i]
  if c == 34 then
    return read_string(i)
  elseif c == 116 then
    if i + 4 <= len and p[i + 1] == 114 and p[i + 2] == 117 and p[i + 3] == 101 then
      return true, i + 4
    end
  elseif c == 102 then
    if i + 5 <= len and p[i + 1] == 97 and p[i + 2] == 108 and p[i + 3] == 115
      and p[i + 4] == 101 then
      return false, i + 5
    end
  elseif c == 110 then
    if i + 4 <= len and p[i + 1] == 117 and p[i + 2] == 108 and p[i + 3] == 108 then
      return M.null, i + 4
    end
  elseif c == 45 or (c >= 48 and c <= 57) then
    return read_number(i)
  end
  fail("unexpected character")
end

-- The containers being read, one level each: the container, and for an object the name of the
-- member whose value is being read (folded, and as written) and where that value starts. Kept
-- between calls (decode never yields), so that reading allocates only what it returns.
local open_containers, member_names, written_names, value_starts = {}, {}, {}, {}

-- The offset of the next member's value in the object at `depth` whose name's opening quote is
-- at `pos`.
local function member_name(pos, depth)
  if p[pos] ~= 34 then fail("expected a member name") end
  local name, after, foldable = read_string(pos)
  pos = skip_ws(after)
  if p[pos] ~= 58 then fail("expected ':'") end
  member_names[depth] = foldable and fold(name) or name
  written_names[depth] = name
  pos = skip_ws(pos + 1)
  value_starts[depth] = pos
  return pos
end

-- One value, read with an explicit stack instead of recursion, so that LuaJIT compiles the
-- loop (a trace cannot return to a frame below the one it started in).
local function read_value(pos)
  local depth = 0
  while true do
    local c = p[pos]
    local value
    -- Open a container, or read a scalar.
    if c == 123 or c == 91 then
      if depth >= MAX_DEPTH then fail("nested too deeply") end
      local first = pos
      pos = skip_ws(pos + 1)
      if c == 123 then
        value = new_table(0, 8)
        value[FIRST] = first
        if p[pos] == 125 then
          value[LAST] = pos + 1
          pos = pos + 1
        else
          depth = depth + 1
          open_containers[depth] = value
          pos = member_name(pos, depth)
          value = nil
        end
      else
        value = new_table(4, 4)
        value[ARRAY], value[FIRST], value.n = true, first, 0
        if p[pos] == 93 then
          value[LAST] = pos + 1
          pos = pos + 1
        else
          depth = depth + 1
          open_containers[depth] = value
          value = nil
        end
      end
    else
      value, pos = read_scalar(pos)
    end
    -- Put the value where it belongs, closing every container it completes.
    while value ~= nil do
      if depth == 0 then return value, pos end
      local container = open_containers[depth]
      local value_end = pos
      pos = skip_ws(pos)
      c = p[pos]
      local array = container[ARRAY]
      if array then
        local n = container.n + 1
        container[n] = value
        container.n = n
      else
        local folded, name = member_names[depth], written_names[depth]
        if container[folded] ~= nil then
          fail('duplicate member "' .. folded .. '"', "duplicate")
        end
        container[folded] = value
        if folded ~= name then
          local raw = container[RAW]
          if not raw then
            raw = {}
            container[RAW] = raw
          end
          raw[folded] = name
        elseif name == "id" then
          container[ID] = sub(text, value_starts[depth] + 1, value_end)
        end
      end
      value = nil
      if c == (array and 93 or 125) then
        container[LAST] = pos + 1
        pos = pos + 1
        open_containers[depth] = nil
        depth = depth - 1
        value = container
      elseif c ~= 44 then
        fail(array and "expected ',' or ']'" or "expected ',' or '}'")
      elseif array then
        pos = skip_ws(pos + 1)
      else
        pos = member_name(skip_ws(pos + 1), depth)
      end
    end
  end
end

local function decode_text(s)
  text, p, len = s, cast(BYTES, s), #s
  local v, after = read_value(skip_ws(0))
  if skip_ws(after) < len then fail("trailing data after the JSON value") end
  return v
end

function M.decode(s)
  local ok, value = pcall(decode_text, s)
  text, p = nil, nil
  if ok then return value end
  if getmetatable(value) == Failure then return nil, value.kind, value.message end
  return nil, "parse", tostring(value)
end

-- Scanning a text already read (valid JSON) again, to find where the parts of a container are.

-- The offset after the string whose opening quote is at offset i; nil when the text ends first.
local function skip_string(i)
  i = i + 1
  while i < len do
    local c = p[i]
    if c == 34 then return i + 1 end
    i = i + (c == 92 and 2 or 1)
  end
  return nil
end

-- The offset after the value at offset i: `value` is what decode made of it (a container knows
-- where it ends; a scalar is scanned).
-- The offset after the scalar (a number or literal) at offset i: the next delimiter.
local function scalar_end(i)
  while i < len do
    local c = p[i]
    if c == 44 or c == 93 or c == 125 or c == 32 or c == 10 or c == 13 or c == 9 then
      return i
    end
    i = i + 1
  end
  return len
end

local function skip(i, value)
  if type(value) == "table" and value[LAST] then return value[LAST] end
  if p[i] == 34 then return skip_string(i) end
  return scalar_end(i)
end

local function scan(v)
  local starts, ends = {}, {}
  local pos = skip_ws(v[FIRST] + 1)
  if v[ARRAY] then
    for k = 1, v.n do
      starts[k] = pos
      pos = skip(pos, v[k])
      ends[k] = pos
      pos = skip_ws(pos)
      if k < v.n then pos = skip_ws(pos + 1) end
    end
  elseif p[pos] ~= 125 then
    while true do
      local name, after, foldable = read_string(pos)
      local folded = foldable and fold(name) or name
      pos = skip_ws(skip_ws(after) + 1)
      starts[folded] = pos
      pos = skip(pos, v[folded])
      ends[folded] = pos
      pos = skip_ws(pos)
      if p[pos] ~= 44 then break end
      pos = skip_ws(pos + 1)
    end
  end
  return { starts = starts, ends = ends, close = pos }
end

-- Where the parts of `v` (an array or object decode made of `s`) are in `s`.
function M.spans(v, s)
  text, p, len = s, cast(BYTES, s), #s
  local ok, spans = pcall(scan, v)
  text, p = nil, nil
  if not ok then error(spans, 2) end
  return spans
end

local function element_bounds(v, k)
  local pos = skip_ws(v[FIRST] + 1)
  for j = 1, k - 1 do
    pos = skip_ws(skip_ws(skip(pos, v[j])) + 1)
  end
  return pos, skip(pos, v[k])
end

-- Where element k of `v` (an array decode made of `s`, with at least k elements) is in `s`:
-- first, last (0-based, last exclusive). Cheaper than spans when one element is wanted.
function M.element(v, s, k)
  text, p, len = s, cast(BYTES, s), #s
  local first, last = element_bounds(v, k)
  text, p = nil, nil
  return first, last
end

-- Reading a text another reader made (a node's answer) for its layout only: brackets and
-- strings are followed, nothing is decoded.

local closers = {} -- the closing bracket each open container waits for

-- The offset after the value at offset i, or nil where brackets do not match or the text ends.
local function skip_value(i)
  local c = p[i]
  if c == 34 then return skip_string(i) end
  if c ~= 123 and c ~= 91 then return scalar_end(i) end
  local depth = 0
  while i < len do
    c = p[i]
    if c == 34 then
      i = skip_string(i)
      if not i then return nil end
    else
      if c == 123 or c == 91 then
        depth = depth + 1
        closers[depth] = c + 2
      elseif c == 125 or c == 93 then
        if closers[depth] ~= c then return nil end
        depth = depth - 1
        if depth == 0 then return i + 1 end
      end
      i = i + 1
    end
  end
  return nil
end

-- The array's elements: their bounds and the text of each one's "id" member (false for none).
local function layout()
  local starts, ends, ids, n = {}, {}, {}, 0
  local pos = skip_ws(0)
  if p[pos] ~= 91 then return nil end
  pos = skip_ws(pos + 1)
  if p[pos] == 93 then
    if skip_ws(pos + 1) ~= len then return nil end
    return starts, ends, ids, 0
  end
  while true do
    local first, id = pos, false
    if p[pos] == 123 then
      pos = skip_ws(pos + 1)
      if p[pos] == 125 then
        pos = pos + 1
      else
        while true do
          if p[pos] ~= 34 then return nil end
          local after = skip_string(pos)
          if not after then return nil end
          local is_id = after == pos + 4 and p[pos + 1] == 105 and p[pos + 2] == 100
            and p[pos + 3] == 34
          pos = skip_ws(after)
          if p[pos] ~= 58 then return nil end
          local value = skip_ws(pos + 1)
          pos = skip_value(value)
          if not pos or pos == value then return nil end
          if is_id then id = sub(text, value + 1, pos) end
          pos = skip_ws(pos)
          local c = p[pos]
          if c == 125 then
            pos = pos + 1
            break
          end
          if c ~= 44 then return nil end
          pos = skip_ws(pos + 1)
        end
      end
    else
      pos = skip_value(pos)
      if not pos or pos == first then return nil end
    end
    n = n + 1
    starts[n], ends[n], ids[n] = first, pos, id
    pos = skip_ws(pos)
    local c = p[pos]
    if c == 93 then
      if skip_ws(pos + 1) ~= len then return nil end
      return starts, ends, ids, n
    end
    if c ~= 44 then return nil end
    pos = skip_ws(pos + 1)
  end
end

-- Where the elements of the JSON array `s` are (0-based; element k from starts[k] to ends[k]),
-- and the "id" member of each as written (false where it has none): starts, ends, ids, n; nil
-- when `s` is not an array of whole values. Brackets and strings are checked, scalars are
-- not: this reads what a node answered, which goes to the client as the node wrote it.
function M.elements(s)
  text, p, len = s, cast(BYTES, s), #s
  local starts, ends, ids, n = layout()
  text, p = nil, nil
  return starts, ends, ids, n
end

-- Encodes a Lua string as a JSON string (for error messages; ASCII control characters and
-- quotes escaped, other bytes as they are).
function M.quote(str)
  return '"' .. gsub(str, '[%c"\\]', function(ch)
    return string.format("\\u%04x", ch:byte())
  end) .. '"'
end

return M
