using System.Runtime.InteropServices;
using XenDisk.Storage.Iscsi.Interop;

namespace XenDisk.Storage.Iscsi;

/// <summary>The SCSI commands a session issues.</summary>
internal enum IscsiOperation
{
    Read,
    Write,
    SynchronizeCache,
    Unmap,
    ReadCapacity,
    Inquiry,
    PersistentReserveIn,
    PersistentReserveOut,
}

/// <summary>How a command ended, as the device layer needs it.</summary>
internal readonly record struct ScsiOutcome(int Status, int SenseKey, int Ascq)
{
    public bool Good => Status == ScsiStatus.GOOD;

    /// <summary>"CHECK CONDITION, sense key 0x5 ASC/ASCQ 0x2400", "timed out": for one log line.</summary>
    public string Describe() => Status switch
    {
        ScsiStatus.GOOD => "good",
        ScsiStatus.CHECK_CONDITION => $"CHECK CONDITION, sense key 0x{SenseKey:x} ASC/ASCQ 0x{Ascq:x4}",
        ScsiStatus.RESERVATION_CONFLICT => "RESERVATION CONFLICT",
        ScsiStatus.BUSY => "BUSY",
        ScsiStatus.TASK_SET_FULL => "TASK SET FULL",
        ScsiStatus.CANCELLED => "not completed in time (cancelled)",
        ScsiStatus.TIMEOUT => "timed out",
        ScsiStatus.ERROR => "transport error",
        _ => $"SCSI status 0x{Status:x}",
    };
}

/// <summary>
/// One pooled command slot of an <see cref="IscsiSession"/>. Ownership: a caller takes a free slot,
/// fills its parameters and hands it to the event loop; from then until <see cref="Done"/> is set the
/// loop owns it (and libiscsi reads or writes the caller's buffers through <see cref="Iov"/>); the
/// caller then reads the outcome and returns the slot. A driven queue's command is answered through
/// <see cref="Queue"/> instead, which returns the slot itself. The native iovec array and the parameter block
/// are allocated once with the slot, so a command in steady state allocates nothing.
/// </summary>
internal sealed unsafe class IscsiCommand : IDisposable
{
    /// <summary>Data-in a control command (INQUIRY, READ CAPACITY, PR IN) copies out; SPC allows 64 KiB, these pages need far less.</summary>
    internal const int ControlDataCapacity = 4096;

    public IscsiCommand(IscsiSession session, int index, int maxSegments)
    {
        Session = session;
        Index = index;
        MaxSegments = maxSegments;
        Iov = (ScsiIovec*)NativeMemory.AlignedAlloc((nuint)(maxSegments * sizeof(ScsiIovec)), 64);
        Unmap = (UnmapList*)NativeMemory.AlignedAlloc((nuint)sizeof(UnmapList), 16);
        ReserveOut = (PersistentReserveOutBasic*)NativeMemory.AlignedAlloc((nuint)sizeof(PersistentReserveOutBasic), 16);
        Handle = GCHandle.Alloc(this);
    }

    public IscsiSession Session { get; }

    public int Index { get; }

    public int MaxSegments { get; }

    /// <summary>What the native completion callback gets back as private_data.</summary>
    public GCHandle Handle { get; }

    public ManualResetEventSlim Done { get; } = new(false, spinCount: 0);

    // Parameters, written by the caller before submission.
    public IscsiOperation Operation;
    public ulong Lba;
    public uint Length;
    public int BlockSize;
    public int IovCount;
    public readonly ScsiIovec* Iov;
    public readonly UnmapList* Unmap;
    public readonly PersistentReserveOutBasic* ReserveOut;
    /// <summary>INQUIRY page (negative: standard data), PR service action.</summary>
    public int Code;
    /// <summary>PR OUT type.</summary>
    public int Type;

    /// <summary>
    /// The driven queue that submitted this command, which gets its outcome on the loop's thread, or
    /// null for a command a caller waits for (<see cref="Done"/>).
    /// </summary>
    public IscsiQueue? Queue;

    /// <summary>The queue's tag for the request this command carries.</summary>
    public int Tag;

    // Owned by the event loop while in flight.
    public nint Task;
    public long DeadlineTimestamp;
    public int Attempts;
    public bool InFlight;
    public bool RetryPending;
    /// <summary>Stopwatch timestamp before which a retried command is not reissued.</summary>
    public long RetryAt;

    /// <summary>This loop cancelled it (its deadline passed, or the session is closing): a cancellation that is final.</summary>
    public bool CancelRequested;

    /// <summary>libiscsi cancelled it when the connection dropped; it waits to be sent again.</summary>
    public bool LostWithConnection;

    /// <summary>The session's reconnect count when the command was last issued: libiscsi may have re-sent it on a newer connection.</summary>
    public long IssuedAfterReconnects;

    // The outcome, written by the loop before Done is set.
    public ScsiOutcome Outcome;
    public readonly byte[] ControlData = new byte[ControlDataCapacity];
    public int ControlDataLength;

    public void Dispose()
    {
        Handle.Free();
        Done.Dispose();
        NativeMemory.AlignedFree(Iov);
        NativeMemory.AlignedFree(Unmap);
        NativeMemory.AlignedFree(ReserveOut);
    }
}
