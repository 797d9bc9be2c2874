-- fsdp.fs: the few file-system helpers the library needs.
local ffi = require 'ffi'

pcall(ffi.cdef, [[
int mkdir(const char *path, unsigned int mode);
int access(const char *path, int mode);
int getpid(void);
char *strerror(int errnum);
]])
local C = ffi.C

local M = {}

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.quote = quote

function M.exists(path) return C.access(path, 0) == 0 end

function M.is_dir(path) return M.exists(path .. '/.') end

-- mkdir -p
function M.mkdirs(path)
   local acc = path:sub(1, 1) == '/' and '' or '.'
   for part in path:gmatch('[^/]+') do
      acc = acc .. '/' .. part
      if not M.exists(acc) and C.mkdir(acc, 493) ~= 0 and not M.is_dir(acc) then
         error('cannot create directory ' .. acc .. ': ' .. ffi.string(C.strerror(ffi.errno())), 0)
      end
   end
end

function M.remove_tree(path)
   if path == '' or path == '/' then error('refusing to remove ' .. path, 0) end
   os.execute('rm -rf ' .. quote(path))
end

-- names in a directory (no . and ..), sorted; hidden ones too when `all`
function M.list(path, all)
   local out = {}
   local p = io.popen('ls -1' .. (all and 'A ' or ' ') .. quote(path) .. ' 2>/dev/null')
   for line in p:lines() do out[#out + 1] = line end
   p:close()
   table.sort(out)
   return out
end

function M.read(path)
   local f, err = io.open(path, 'rb')
   if not f then return nil, err end
   local s = f:read('*a')
   f:close()
   return s
end

function M.pid() return C.getpid() end

function M.basename(path) return (path:gsub('/+$', ''):match('[^/]+$')) or path end

return M
