; Inno Setup script for Cairn: a per-user install (no administrator rights), a Start-menu shortcut, and an
; uninstaller that asks before deleting the user's conversations and settings.
;
; Built by installer\build_windows.ps1 after PyInstaller made dist\Cairn\Cairn.exe:
;     ISCC.exe /DAppVersion=0.1.0 /DFileVersion=0.1.0.0 /DDistDir=C:\...\dist\Cairn /DOutputDir=C:\...\dist
;              installer\windows\cairn.iss
; Needs Inno Setup 6.3 or newer (for the x64compatible architecture identifier).

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef DistDir
  #define DistDir "..\..\dist\Cairn"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif
#ifndef FileVersion
  ; Numbers only (a.b.c.d): the Windows version resource cannot hold "0.2.0rc1"
  #define FileVersion "0.0.0.0"
#endif
#define AppName "Cairn"
#define AppExe "Cairn.exe"

[Setup]
; The AppId identifies the installation for upgrades and the uninstaller: never change it.
AppId={{5B7D2C1E-8F3A-4C6B-9E2D-7A1F0C3B4D58}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher={#AppName}
AppComments=A desktop chat client for large language models whose conversations survive any network
; Per user: %LOCALAPPDATA%\Programs\Cairn, the Start menu of this user, HKCU for the uninstall entry.
PrivilegesRequired=lowest
DefaultDirName={localappdata}\Programs\{#AppName}
DisableProgramGroupPage=yes
DefaultGroupName={#AppName}
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename={#AppName}-{#AppVersion}-windows-x64-setup
SetupIconFile=..\..\resources\icons\cairn.ico
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName}
VersionInfoVersion={#FileVersion}
VersionInfoProductName={#AppName}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
; Close a running Cairn (through the Restart Manager) before its files are replaced or removed.
CloseApplications=yes
RestartApplications=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
; The whole PyInstaller one-dir folder: Cairn.exe and _internal\.
Source: "{#DistDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExe}"; Comment: "Chat with language models, online or offline"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[Code]
{ The user's data: Cairn keeps conversations (cairn.sqlite), settings.json and window.ini in
  %LOCALAPPDATA%\Cairn\Cairn (platformdirs' data and config folder for app "Cairn" by "Cairn").
  The uninstaller removes the program and then asks whether to delete that folder too; "No" is the default, and a
  silent uninstall (/SILENT, /VERYSILENT) never deletes it. }

function UserDataFolder(): String;
begin
  Result := ExpandConstant('{localappdata}\Cairn');
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Folder: String;
  Answer: Integer;
begin
  if CurUninstallStep <> usPostUninstall then
    Exit;
  Folder := UserDataFolder();
  if not DirExists(Folder) then
    Exit;
  if UninstallSilent() then
  begin
    Log('Silent uninstall: keeping the user data in ' + Folder);
    Exit;
  end;
  Answer := MsgBox(
    'Also delete your Cairn conversations and settings?' + #13#10 + #13#10 +
    'They are stored in:' + #13#10 + Folder + #13#10 + #13#10 +
    'Choose Yes to delete them now; this cannot be undone.' + #13#10 +
    'Choose No to keep them (a later installation of Cairn will find them again).' + #13#10 + #13#10 +
    'Conversations already copied to a PostgreSQL server stay there either way. Passwords Cairn saved in the ' +
    'Windows Credential Manager (entries for "cairn") are not touched.',
    mbConfirmation, MB_YESNO or MB_DEFBUTTON2);
  if Answer = IDYES then
  begin
    if DelTree(Folder, True, True, True) then
      Log('Deleted the user data in ' + Folder)
    else
      MsgBox('Some files in ' + Folder + ' could not be deleted (is Cairn still running?).' + #13#10 +
             'You can delete the folder yourself.', mbError, MB_OK);
  end
  else
    Log('Kept the user data in ' + Folder);
end;
