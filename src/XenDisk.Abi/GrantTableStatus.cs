namespace XenDisk.Abi;

/// <summary>xen/include/public/grant_table.h "GNTST_*": the per-operation status of a grant map or copy.</summary>
public static class GrantStatus
{
    public const short Okay = 0;
    public const short GeneralError = -1;
    public const short BadDomain = -2;
    public const short BadGrantRef = -3;
    public const short BadHandle = -4;
    public const short BadVirtualAddress = -5;
    public const short BadDeviceAddress = -6;
    public const short NoDeviceSpace = -7;
    public const short PermissionDenied = -8;
    public const short BadPage = -9;
    public const short BadCopyArgument = -10;
    public const short AddressTooBig = -11;
    public const short EAgain = -12;
}

/// <summary>grant_table.h "GNTCOPY_*": which side of a grant copy is a grant reference.</summary>
[Flags]
public enum GrantCopyFlags : ushort
{
    None = 0,
    SourceGrantRef = 1 << 0,
    DestinationGrantRef = 1 << 1,
}
