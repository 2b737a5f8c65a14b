namespace XenDisk.Fuzz;

/// <summary>
/// One fuzz target: a function of untrusted bytes that must only ever return. It catches the refusal
/// its code under test documents (a <see cref="XenDisk.Storage.StorageException"/>, a refused
/// <c>RequestCheck</c>) and throws <see cref="FuzzFindingException"/> when an invariant breaks; any
/// other exception escaping <see cref="Run"/> is a finding too (afl-fuzz records it as a crash).
/// </summary>
public abstract class FuzzTarget
{
    /// <summary>The name on the command line and the corpus folder's name (Corpus/NAME).</summary>
    public abstract string Name { get; }

    /// <summary>One line for the usage text.</summary>
    public abstract string Description { get; }

    /// <summary>Runs one input; says whether the code under test accepted it or refused it as documented.</summary>
    public abstract FuzzOutcome Run(ReadOnlySpan<byte> input);
}

public enum FuzzOutcome
{
    /// <summary>Refused the documented way (a StorageException, a refused request check).</summary>
    Refused,
    /// <summary>Accepted (opened, parsed, validated), and every check after that held.</summary>
    Accepted,
}

/// <summary>An invariant the code under test broke: data lost, a write outside the image, an impossible answer.</summary>
public sealed class FuzzFindingException(string message) : Exception(message)
{
    public static void Check(bool condition, string message)
    {
        if (!condition)
        {
            throw new FuzzFindingException(message);
        }
    }
}
