using System.Reflection;
using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native.Tests;

/// <summary>
/// The bindings against the installed libraries (libxengnttab1, libxenevtchn1, libxenstore4 must be
/// installed: a missing library fails here, naming it, rather than being skipped).
/// </summary>
public sealed class NativeLibraryTests
{
    public static TheoryData<string> LibraryNames()
    {
        var data = new TheoryData<string>();
        foreach (NativeLibraryRequirement library in Interop.Libraries.All)
        {
            data.Add(library.LibraryName);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(LibraryNames))]
    public void Library_loads_and_exports_every_symbol_the_bindings_import(string libraryName)
    {
        NativeLibraryRequirement library = Interop.Libraries.All.Single(l => l.LibraryName == libraryName);

        Assert.True(
            NativeLibrary.TryLoad(library.LibraryName, typeof(XenEnvironment).Assembly, null, out nint handle),
            $"library {library.LibraryName} does not load: install the Debian package {library.DebianPackage}");
        try
        {
            string[] missing = [.. library.Symbols.Where(symbol => !NativeLibrary.TryGetExport(handle, symbol, out _))];
            Assert.True(missing.Length == 0, $"library {library.LibraryName} lacks {string.Join(", ", missing)}");
        }
        finally
        {
            NativeLibrary.Free(handle);
        }
    }

    [Fact]
    public void Required_symbol_table_matches_the_LibraryImport_declarations()
    {
        Dictionary<string, SortedSet<string>> declared = [];
        foreach (Type type in typeof(XenEnvironment).Assembly.GetTypes())
        {
            foreach (MethodInfo method in type.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                if (method.GetCustomAttribute<LibraryImportAttribute>() is { } import)
                {
                    Add(import.LibraryName, import.EntryPoint ?? method.Name);
                }
                else if (method.GetCustomAttribute<DllImportAttribute>() is { } dllImport && !IsGeneratedStub(method))
                {
                    // A hand-written DllImport would bypass the table; list it so that the comparison catches it.
                    Add(dllImport.Value, dllImport.EntryPoint ?? method.Name);
                }
            }
        }

        Dictionary<string, SortedSet<string>> required = Interop.Libraries.All.ToDictionary(l => l.LibraryName, l => new SortedSet<string>(l.Symbols, StringComparer.Ordinal));

        Assert.Equal(required.Keys.Order(), declared.Keys.Order());
        foreach ((string library, SortedSet<string> symbols) in required)
        {
            Assert.Equal(symbols, declared[library]);
        }

        Assert.Equal(Interop.Libraries.All.Sum(l => l.Symbols.Count), required.Values.Sum(s => s.Count));

        void Add(string library, string symbol)
        {
            if (!declared.TryGetValue(library, out SortedSet<string>? symbols))
            {
                declared[library] = symbols = new SortedSet<string>(StringComparer.Ordinal);
            }

            symbols.Add(symbol);
        }
    }

    // The LibraryImport generator emits its inner DllImport as a local function ("<name>g____PInvoke|..").
    private static bool IsGeneratedStub(MethodInfo method) => method.Name.Contains("__PInvoke", StringComparison.Ordinal);
}
