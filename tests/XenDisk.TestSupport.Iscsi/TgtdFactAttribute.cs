namespace XenDisk.TestSupport.Iscsi;

/// <summary>A test that needs tgtd: skipped, with the reason, only where Debian's tgt is not installed.</summary>
public sealed class TgtdFactAttribute : Xunit.FactAttribute
{
    public TgtdFactAttribute()
    {
        if (TgtdTarget.UnavailableReason is string reason)
        {
            Skip = reason;
        }
    }
}
