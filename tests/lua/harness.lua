-- tests/lua/harness.lua: assertions for the Lua tests. Failures are
-- counted and reported with their line; the test script ends with
-- `return t.done()`, which gives exit status 1 when anything failed.
local M = {failures = 0, checks = 0, name = arg and arg[0] or 'test'}

local function where()
   local info = debug.getinfo(3, 'Sl')
   return (info.short_src or '?') .. ':' .. (info.currentline or 0)
end

function M.check(cond, msg, ...)
   M.checks = M.checks + 1
   if not cond then
      M.failures = M.failures + 1
      io.stderr:write('FAIL ' .. where() .. ': ' .. string.format(msg or 'check failed', ...) .. '\n')
   end
   return cond
end

-- |a - b| <= atol + rtol * |b|
function M.close(a, b, rtol, atol, msg, ...)
   local ok = math.abs(a - b) <= (atol or 0) + (rtol or 0) * math.abs(b)
   M.checks = M.checks + 1
   if not ok then
      M.failures = M.failures + 1
      io.stderr:write(string.format('FAIL %s: %s: got %.9g want %.9g\n', where(),
                                    string.format(msg or 'values differ', ...), a, b))
   end
   return ok
end

-- runs fn, expects it to raise an error whose text contains every pattern
-- (plain substrings); returns the message
function M.raises(fn, patterns, label)
   local ok, err = pcall(fn)
   M.checks = M.checks + 1
   local msg = tostring(err)
   if ok then
      M.failures = M.failures + 1
      io.stderr:write('FAIL ' .. where() .. ': ' .. (label or '') .. ': expected an error, none raised\n')
      return nil
   end
   for _, p in ipairs(type(patterns) == 'table' and patterns or {patterns}) do
      if not msg:find(p, 1, true) then
         M.failures = M.failures + 1
         io.stderr:write(string.format("FAIL %s: %s: error %q lacks %q\n", where(), label or '', msg, p))
         return msg
      end
   end
   return msg
end

-- runs a shell command; returns exit status and combined output
function M.sh(cmd)
   local out = os.tmpname()
   os.execute('(' .. cmd .. ') > ' .. out .. ' 2>&1; echo $? >> ' .. out)
   local f = io.open(out)
   local text = f:read('*a')
   f:close()
   os.remove(out)
   local body, status = text:match('^(.-)(%d+)%s*$')
   return tonumber(status), body or text
end

function M.done()
   if M.failures > 0 then
      io.stderr:write(string.format('%s: %d of %d checks failed\n', M.name, M.failures, M.checks))
      return 1
   end
   print(string.format('%s: %d checks passed', M.name, M.checks))
   return 0
end

return M
