/*
 * bcryptprimitives.dll stand-in for Wine 8 (Debian bookworm).
 *
 * Rust std for Windows gets its randomness (HashMap seeds, etc.) from
 * ProcessPrng in bcryptprimitives.dll. Wine 8 ships no such DLL, so every
 * Rust exe fails to load (exit code 53, silent under WINEDEBUG=-all).
 * This DLL exports ProcessPrng and fills the buffer with RtlGenRandom
 * (advapi32!SystemFunction036), which Wine does implement.
 * Only for the test Wine prefix; real Windows has the real DLL.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length; feed large requests in chunks. */
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    /* The real ProcessPrng is documented to always return TRUE. */
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst; (void)reason; (void)reserved;
    return TRUE;
}
