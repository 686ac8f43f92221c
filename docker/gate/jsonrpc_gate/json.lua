-- Strict JSON reader for the gate (docs/architecture.md, "The JSON-RPC gate").
--
-- decode(text) -> value | nil, err_kind, message
--   err_kind "parse": not JSON (RFC 8259: no trailing data, no lone surrogates, valid UTF-8,
--   no raw control characters in strings);
--   err_kind "duplicate": an object holds two members whose names fold to the same name (ASCII
--   case, and the two non-ASCII letters Go's encoding/json folds: U+017F to s, U+212A to k),
--   which JSON readers disagree on.
-- Objects decode to tables keyed by the folded member name; M.raw_keys(obj)[folded] is the
-- member's name as written, M.raw_id(obj) the exact text of a member written "id". Arrays
-- decode to tables with an `n` field; null decodes to M.null.

local byte, sub, find, char = string.byte, string.sub, string.find, string.char
local lower, gsub = string.lower, string.gsub
local tonumber, setmetatable = tonumber, setmetatable

local M = {}
M.null = setmetatable({}, { __tostring = function() return "null" end })

local RAW_KEYS = setmetatable({}, { __mode = "k" })
local RAW_ID = setmetatable({}, { __mode = "k" })
local ARRAY = setmetatable({}, { __mode = "k" })

function M.raw_keys(obj) return RAW_KEYS[obj] end
function M.raw_id(obj) return RAW_ID[obj] end
function M.is_array(v) return ARRAY[v] == true end

local function fold(name)
  -- U+017F (LATIN SMALL LETTER LONG S) = C5 BF, U+212A (KELVIN SIGN) = E2 84 AA
  if find(name, "[\128-\255]") then
    name = gsub(name, "\197\191", "s")
    name = gsub(name, "\226\132\170", "k")
  end
  return lower(name)
end
M.fold = fold

local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- Length of the valid UTF-8 sequence starting at i, or nil.
local function utf8_len(s, i)
  local c = byte(s, i)
  local n, min
  if c >= 0xC2 and c <= 0xDF then n, min = 2, 0x80
  elseif c >= 0xE0 and c <= 0xEF then n, min = 3, 0x800
  elseif c >= 0xF0 and c <= 0xF4 then n, min = 4, 0x10000
  else return nil end
  local cp = c % (2 ^ (7 - n))
  for k = 1, n - 1 do
    local d = byte(s, i + k)
    if not d or d < 0x80 or d > 0xBF then return nil end
    cp = cp * 64 + d % 64
  end
  if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
  return n
end

local ESCAPES = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f",
  [110] = "\n", [114] = "\r", [116] = "\t" }

local fail -- set per decode call

-- Reads the string whose opening quote is at i; returns the decoded string and the index after
-- the closing quote.
local function read_string(s, i)
  local pos = i + 1
  local parts, np = nil, 0
  local start = pos
  while true do
    local j = find(s, '[%c"\\\128-\255]', pos)
    if not j then return fail("unterminated string") end
    local c = byte(s, j)
    if c == 34 then
      local piece = sub(s, start, j - 1)
      if parts then
        np = np + 1; parts[np] = piece
        return table.concat(parts), j + 1
      end
      return piece, j + 1
    elseif c == 92 then
      parts = parts or {}
      np = np + 1; parts[np] = sub(s, start, j - 1)
      local e = byte(s, j + 1)
      local simple = e and ESCAPES[e]
      if simple then
        np = np + 1; parts[np] = simple
        pos = j + 2
      elseif e == 117 then
        local hex = sub(s, j + 2, j + 5)
        if not find(hex, "^%x%x%x%x$") then return fail("bad \\u escape") end
        local cp = tonumber(hex, 16)
        pos = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local hex2 = sub(s, pos + 2, pos + 5)
          if sub(s, pos, pos + 1) ~= "\\u" or not find(hex2, "^%x%x%x%x$") then
            return fail("lone surrogate")
          end
          local lo = tonumber(hex2, 16)
          if lo < 0xDC00 or lo > 0xDFFF then return fail("lone surrogate") end
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
          pos = pos + 6
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          return fail("lone surrogate")
        end
        np = np + 1; parts[np] = utf8_char(cp)
      else
        return fail("bad escape")
      end
      start = pos
    elseif c >= 128 then
      local n = utf8_len(s, j)
      if not n then return fail("invalid UTF-8") end
      pos = j + n
    elseif c == 127 then
      pos = j + 1
    else
      return fail("control character in string")
    end
  end
end

local decode_value

local function skip_ws(s, i)
  local _, e = find(s, "^[ \t\r\n]*", i)
  return e + 1
end

local function read_object(s, i, depth)
  local obj, raw = {}, {}
  local pos = skip_ws(s, i + 1)
  if byte(s, pos) == 125 then
    RAW_KEYS[obj] = raw
    return obj, pos + 1
  end
  while true do
    if byte(s, pos) ~= 34 then return fail("expected a member name") end
    local name, after = read_string(s, pos)
    pos = skip_ws(s, after)
    if byte(s, pos) ~= 58 then return fail("expected ':'") end
    pos = skip_ws(s, pos + 1)
    local value_start = pos
    local value
    value, pos = decode_value(s, pos, depth)
    local folded = fold(name)
    if raw[folded] ~= nil then return fail('duplicate member "' .. folded .. '"', "duplicate") end
    raw[folded] = name
    obj[folded] = value
    if name == "id" then RAW_ID[obj] = sub(s, value_start, pos - 1) end
    pos = skip_ws(s, pos)
    local c = byte(s, pos)
    if c == 125 then
      RAW_KEYS[obj] = raw
      return obj, pos + 1
    end
    if c ~= 44 then return fail("expected ',' or '}'") end
    pos = skip_ws(s, pos + 1)
  end
end

local function read_array(s, i, depth)
  local arr, n = {}, 0
  ARRAY[arr] = true
  local pos = skip_ws(s, i + 1)
  if byte(s, pos) == 93 then
    arr.n = 0
    return arr, pos + 1
  end
  while true do
    local value
    value, pos = decode_value(s, pos, depth)
    n = n + 1
    arr[n] = value
    pos = skip_ws(s, pos)
    local c = byte(s, pos)
    if c == 93 then
      arr.n = n
      return arr, pos + 1
    end
    if c ~= 44 then return fail("expected ',' or ']'") end
    pos = skip_ws(s, pos + 1)
  end
end

local MAX_DEPTH = 128

decode_value = function(s, i, depth)
  local c = byte(s, i)
  if c == 123 then
    if depth >= MAX_DEPTH then return fail("nested too deeply") end
    return read_object(s, i, depth + 1)
  elseif c == 91 then
    if depth >= MAX_DEPTH then return fail("nested too deeply") end
    return read_array(s, i, depth + 1)
  elseif c == 34 then
    return read_string(s, i)
  elseif c == 116 then
    if sub(s, i, i + 3) == "true" then return true, i + 4 end
  elseif c == 102 then
    if sub(s, i, i + 4) == "false" then return false, i + 5 end
  elseif c == 110 then
    if sub(s, i, i + 3) == "null" then return M.null, i + 4 end
  else
    local _, e = find(s, "^-?0", i)
    if not e then _, e = find(s, "^-?[1-9]%d*", i) end
    if e then
      local _, f = find(s, "^%.%d+", e + 1)
      if f then e = f end
      _, f = find(s, "^[eE][+-]?%d+", e + 1)
      if f then e = f end
      return tonumber(sub(s, i, e)), e + 1
    end
  end
  return fail("unexpected character")
end

-- Errors unwind through error() with a table, caught in decode.
local Failure = {}
fail = function(message, kind)
  error(setmetatable({ kind = kind or "parse", message = message }, Failure), 0)
end

function M.decode(text)
  local ok, value, pos = pcall(function()
    local start = skip_ws(text, 1)
    local v, after = decode_value(text, start, 0)
    local finish = skip_ws(text, after)
    if finish <= #text then fail("trailing data after the JSON value") end
    return v, after
  end)
  if ok then return value end
  if getmetatable(value) == Failure then return nil, value.kind, value.message end
  return nil, "parse", tostring(value)
end

-- Encodes a Lua string as a JSON string (for error messages; ASCII control characters and
-- quotes escaped, other bytes as they are).
function M.quote(str)
  return '"' .. gsub(str, '[%c"\\]', function(ch)
    return string.format("\\u%04x", byte(ch))
  end) .. '"'
end

return M
