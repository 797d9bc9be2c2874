/* fuzz_lua.c - the parsers written in Lua (lua/fsdp/json.lua, yaml.lua, the
 * checkpoint checks, prepare's readers, config.json) under the fuzzer: a
 * LuaJIT state runs tests/fuzz/fuzz_lua.lua's target FUZZ_LUA_TARGET on each
 * input. Refusing an input is fine when the error is one of ours (a message
 * the code raised on purpose); a Lua runtime error ("x.lua:12: attempt to
 * index a nil value", a stack overflow) or a non-string error is a bug, and
 * the target aborts so the fuzzer keeps the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#ifndef FUZZ_LUA_TARGET
#error "build with -DFUZZ_LUA_TARGET=\"json\" (or yaml, ckpt, prepare, config)"
#endif
#ifndef FSDP_ROOT_DIR
#define FSDP_ROOT_DIR "."
#endif

static lua_State *L;
static int target_ref = LUA_NOREF;

/* Coverage of the Lua code for libFuzzer: a line hook counts every (source,
 * line) pair into libFuzzer's extra counters, so it keeps the inputs that
 * reach new lines of the parsers (the C harness alone shows it nothing). The
 * mutation driver ignores the counters. */
#ifdef __clang__
__attribute__((section("__libfuzzer_extra_counters")))
#endif
static uint8_t lua_lines[1 << 16];

static void line_hook(lua_State *S, lua_Debug *ar) {
    if (!lua_getinfo(S, "S", ar)) return;
    uint64_t h = (uint64_t)(uintptr_t)ar->source * 0x9e3779b97f4a7c15ull ^ (uint64_t)ar->currentline * 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    uint8_t *c = &lua_lines[h & (sizeof lua_lines - 1)];
    if (*c < 255) (*c)++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    const char *root = getenv("FSDP_ROOT");
    if (!root || !*root) root = FSDP_ROOT_DIR;
    L = luaL_newstate();
    luaL_openlibs(L);
    char path[4096];
    snprintf(path, sizeof path, "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua", root, root, root);
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushstring(L, root);
    lua_setglobal(L, "FSDP_ROOT");
    snprintf(path, sizeof path, "%s/tests/fuzz/fuzz_lua.lua", root);
    if (luaL_dofile(L, path) != 0) {
        fprintf(stderr, "fuzz_lua: %s\n", lua_tostring(L, -1));
        exit(2);
    }
    lua_getfield(L, -1, FUZZ_LUA_TARGET);
    if (!lua_isfunction(L, -1)) {
        fprintf(stderr, "fuzz_lua: no target '%s' in %s\n", FUZZ_LUA_TARGET, path);
        exit(2);
    }
    target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
    return 0;
}

/* "path/x.lua:12: ..." : an error raised by the Lua VM (or by error() with
 * a level) in our code, not a message raised on purpose with level 0 */
static int is_runtime_error(const char *msg) {
    size_t k = strspn(msg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/.-");
    return k >= 4 && msg[k] == ':' && memcmp(msg + k - 4, ".lua", 4) == 0 && msg[k + 1] >= '0' && msg[k + 1] <= '9';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static unsigned long calls;
    lua_rawgeti(L, LUA_REGISTRYINDEX, target_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != 0) {
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        /* (only the start of the message counts: inputs echoed in it can
         * say anything) */
        if (!msg || is_runtime_error(msg) || !strncmp(msg, "FUZZ BUG", 8) || !strcmp(msg, "stack overflow")) {
            fprintf(stderr, "fuzz_lua(%s): not a refusal: %s\n", FUZZ_LUA_TARGET, msg ? msg : "(not a string)");
            abort();
        }
    }
    lua_settop(L, 0);
    if (++calls % 256 == 0) lua_gc(L, LUA_GCSTEP, 200);
    return 0;
}
