namespace XenDisk.Abi;

/// <summary>xen/include/public/io/xenbus.h: the state each end publishes in its "state" key.</summary>
public enum XenbusState
{
    Unknown = 0,
    Initialising = 1,
    /// <summary>The backend is ready for the frontend's ring details (the frontend may now read our features).</summary>
    InitWait = 2,
    /// <summary>The frontend published its rings and event channels.</summary>
    Initialised = 3,
    Connected = 4,
    /// <summary>The device is being closed: finish in-flight work.</summary>
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

public static class XenbusStateText
{
    /// <summary>Parses a "state" value; xenstore values are decimal text.</summary>
    public static bool TryParse(string? text, out XenbusState state)
    {
        if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int value)
            && value is >= (int)XenbusState.Unknown and <= (int)XenbusState.Reconfigured)
        {
            state = (XenbusState)value;
            return true;
        }

        state = XenbusState.Unknown;
        return false;
    }

    public static string ToWire(XenbusState state) => ((int)state).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
